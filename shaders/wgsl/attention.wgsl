// Causal grouped-query attention of new queries over the KV cache (32-bit words holding f16
// pairs or f32 values by DTYPE, see kv.wgsl), with an online softmax.
// One workgroup per (head, token); its threads score 64 positions at a time, then each thread
// accumulates its share of the head's value dimensions.
// a: heads, b: kv_heads, c: head_dim (≤ 1024), d: pos0, e: kv width (kv_heads · head_dim),
// f: scale (f32 bits), g: sliding window (a query at position q sees q - g + 1 ..= q; 0: all),
// h: values per head (≤ 512) | latent << 16. A latent cache (MLA) has no values of its own: a
// head's values are the first of its key, read from `kc` (bound as `vc` too).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> vc: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 1024>;
var<workgroup> scores: array<f32, 64>;

// Keys `i` and `i + 1` (`i` even).
fn k_pair(i: u32) -> vec2<f32> {
    if (DTYPE == 1u) { return unpack2x16float(kc[i >> 1u]); }
    return vec2<f32>(bitcast<f32>(kc[i]), bitcast<f32>(kc[i + 1u]));
}

fn v_at(i: u32) -> f32 {
    if (DTYPE == 1u) {
        let pair = unpack2x16float(vc[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(vc[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) li: vec3<u32>) {
    let h = wg.x;
    let t = wg.y;
    let hd = p.c;
    let kvh = h / (p.a / p.b);
    let qbase = (t * p.a + h) * hd;
    let vd = p.h & 0xffffu;
    let latent = (p.h >> 16u) == 1u;
    let v_head = select(vd, hd, latent);
    let v_row = p.b * v_head;
    let obase = (t * p.a + h) * vd;
    for (var i = li.x; i < hd; i += 64u) { qs[i] = q[qbase + i]; }
    workgroupBarrier();
    let len = p.d + t + 1u;
    var first = 0u;
    if (p.g != 0u && len > p.g) { first = len - p.g; }
    let scale = bitcast<f32>(p.f);
    var m = -3.0e38;
    var s = 0.0;
    var acc: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) { acc[j] = 0.0; }
    let nc = (vd + 63u) / 64u;
    for (var p0 = first; p0 < len; p0 += 64u) {
        let pos = p0 + li.x;
        var sc = -3.0e38;
        if (pos < len) {
            let kb = pos * p.e + kvh * hd;
            var d = 0.0;
            // kb and hd are even: read the keys a pair at a time.
            for (var i = 0u; i < hd; i += 2u) {
                let kk = k_pair(kb + i);
                d += qs[i] * kk.x + qs[i + 1u] * kk.y;
            }
            sc = d * scale;
        }
        scores[li.x] = sc;
        workgroupBarrier();
        let n = min(64u, len - p0);
        var tile_max = m;
        for (var j = 0u; j < n; j++) { tile_max = max(tile_max, scores[j]); }
        let correction = exp(m - tile_max);
        s *= correction;
        for (var j = 0u; j < 8u; j++) { acc[j] *= correction; }
        for (var j = 0u; j < n; j++) {
            let e = exp(scores[j] - tile_max);
            s += e;
            let vb = (p0 + j) * v_row + kvh * v_head;
            for (var c = 0u; c < nc; c++) {
                let dim = li.x + 64u * c;
                if (dim < vd) { acc[c] += e * v_at(vb + dim); }
            }
        }
        m = tile_max;
        workgroupBarrier();
    }
    for (var c = 0u; c < nc; c++) {
        let dim = li.x + 64u * c;
        if (dim < vd) { out[obase + dim] = acc[c] / s; }
    }
}
