// y[t, row] = Σ_k w[row, k] · x[t, k], with w in its stored format (DTYPE).
// One workgroup computes one row for up to 8 tokens; its 64 threads split the row, each
// dequantizing an element once for all 8 tokens, then reduce.
// a: rows in this part, b: cols, c: tokens, d: row bytes, e: row of y where the part starts,
// f: y's row length (all rows of the weight).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> part_a: array<vec4<f32>, 64>;
var<workgroup> part_b: array<vec4<f32>, 64>;

fn xt(base: u32, t: u32, n: u32) -> f32 {
    if (t < n) { return x[base + t * p.b]; }
    return 0.0;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let row = wg.x;
    let t0 = wg.y * 8u;
    let cols = p.b;
    let ro = row * p.d;
    let nt = min(8u, p.c - t0);
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var k = li.x; k < cols; k += 64u) {
        let v = elem(ro, k);
        let xb = t0 * cols + k;
        a += v * vec4<f32>(xt(xb, 0u, nt), xt(xb, 1u, nt), xt(xb, 2u, nt), xt(xb, 3u, nt));
        if (nt > 4u) {
            b += v * vec4<f32>(xt(xb, 4u, nt), xt(xb, 5u, nt), xt(xb, 6u, nt), xt(xb, 7u, nt));
        }
    }
    part_a[li.x] = a;
    part_b[li.x] = b;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li.x < s) {
            part_a[li.x] += part_a[li.x + s];
            part_b[li.x] += part_b[li.x + s];
        }
        workgroupBarrier();
    }
    if (li.x == 0u) {
        let r = array<f32, 8>(part_a[0].x, part_a[0].y, part_a[0].z, part_a[0].w,
                              part_b[0].x, part_b[0].y, part_b[0].z, part_b[0].w);
        let out = t0 * p.f + p.e + row;
        for (var t = 0u; t < nt; t++) { y[out + t * p.f] = r[t]; }
    }
}
