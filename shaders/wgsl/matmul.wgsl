// y[t, row] = Σ_k w[row, k] · x[t, k], with w in its stored format (DTYPE).
// One workgroup computes one row for up to 4 tokens; its 64 threads split the row, each
// dequantizing an element once for all 4 tokens, then reduce.
// a: rows in this part, b: cols, c: tokens, d: row bytes, e: row of y where the part starts,
// f: y's row length (all rows of the weight).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let row = wg.x;
    let t0 = wg.y * 4u;
    let cols = p.b;
    let ro = row * p.d;
    let nt = min(4u, p.c - t0);
    var acc = vec4<f32>(0.0);
    for (var k = li.x; k < cols; k += 64u) {
        let v = elem(ro, k);
        let xb = t0 * cols + k;
        acc.x += v * x[xb];
        if (nt > 1u) { acc.y += v * x[xb + cols]; }
        if (nt > 2u) { acc.z += v * x[xb + 2u * cols]; }
        if (nt > 3u) { acc.w += v * x[xb + 3u * cols]; }
    }
    part[li.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li.x < s) { part[li.x] += part[li.x + s]; }
        workgroupBarrier();
    }
    if (li.x == 0u) {
        let r = part[0];
        let out = t0 * p.f + p.e + row;
        y[out] = r.x;
        if (nt > 1u) { y[out + p.f] = r.y; }
        if (nt > 2u) { y[out + 2u * p.f] = r.z; }
        if (nt > 3u) { y[out + 3u * p.f] = r.w; }
    }
}
