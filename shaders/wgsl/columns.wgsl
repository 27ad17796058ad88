// Columns `d..d + b` of each of the `a` rows of x (rows `c` wide) into columns `f..f + b` of the
// rows of out (rows `e` wide): one part of a row-wise concatenation, or a slice of columns.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.y * nw.x * 64u + gid.x;
    if (i >= p.a * p.b) { return; }
    let r = i / p.b;
    let j = i % p.b;
    out[r * p.e + p.f + j] = x[r * p.c + p.d + j];
}
