// out[r, :] = x[idx[r], :] · s[r]: the rows a mixture-of-experts layer hands each expert, and
// the experts' weighted rows back in token order. a: row width, b: rows of out.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.y * nw.x * 64u + gid.x;
    if (i >= p.a * p.b) { return; }
    let r = i / p.a;
    let k = i % p.a;
    out[i] = x[idx[r] * p.a + k] * s[r];
}
