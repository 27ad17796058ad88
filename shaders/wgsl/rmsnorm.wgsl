// out[t] = x[t] / sqrt(mean(x[t]²) + eps) · w. One workgroup per token.
// a: width, b: eps (f32 bits).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let n = p.a;
    let base = wg.x * n;
    var s = 0.0;
    for (var i = li.x; i < n; i += 64u) {
        let v = x[base + i];
        s += v * v;
    }
    part[li.x] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (li.x < k) { part[li.x] += part[li.x + k]; }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(part[0] / f32(n) + bitcast<f32>(p.b));
    for (var i = li.x; i < n; i += 64u) {
        out[base + i] = x[base + i] * scale * w[i];
    }
}
