// Rotary position embedding in place on [tokens, heads · head_dim] at positions pos0 + t.
// a: tokens·heads·(head_dim/2) pairs, b: heads, c: head_dim, d: pos0, e: factor (f32 bits)
// multiplying the result, f: 1 when pairs are (2i, 2i+1) (GGUF's Llama order), 0 when
// (i, i + head_dim/2). `inv` holds the head_dim/2 inverse frequencies.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> inv: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let idx = gid.y * nw.x * 64u + gid.x;
    if (idx >= p.a) { return; }
    let half = p.c / 2u;
    let i = idx % half;
    let head = idx / half;
    let t = head / p.b;
    let base = head * p.c;
    let angle = f32(p.d + t) * inv[i];
    let factor = bitcast<f32>(p.e);
    let c = cos(angle) * factor;
    let s = sin(angle) * factor;
    var ia = base + i;
    var ib = base + i + half;
    if (p.f == 1u) {
        ia = base + 2u * i;
        ib = ia + 1u;
    }
    let x0 = x[ia];
    let x1 = x[ib];
    x[ia] = x0 * c - x1 * s;
    x[ib] = x0 * s + x1 * c;
}
