// out[t, :] = table[ids[t], :] dequantized, for the ids that fall in this part of the table.
// a: cols, b: tokens, c: row bytes, d: first row of the part, e: rows in the part.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let k = wg.x * 64u + li.x;
    let t = wg.y;
    if (k >= p.a || t >= p.b) { return; }
    let id = ids[t];
    if (id < p.d || id >= p.d + p.e) { return; }
    out[t * p.a + k] = elem((id - p.d) * p.c, k);
}
