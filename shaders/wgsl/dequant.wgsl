// Reading stored weights (prepended to the kernels that bind them as `w`): element `e` of the
// row that starts at byte `ro`, in the format DTYPE, GGML's number for it (as in GGUF files).
// Each format follows the scalar reference in shaders/src/quant/.

fn wbyte(o: u32) -> u32 { return byte_in(w[o >> 2u], o); }
fn wf16(o: u32) -> f32 { return f16_in(w[o >> 2u], o); }
fn wbf16(o: u32) -> f32 { return bf16_in(w[o >> 2u], o); }
fn wu32(o: u32) -> u32 {
    return wbyte(o) | (wbyte(o + 1u) << 8u) | (wbyte(o + 2u) << 16u) | (wbyte(o + 3u) << 24u);
}

// Element `i` (0..32) of 32 nibbles in 16 bytes at `o`: low nibbles first, then high ones.
fn nib32(o: u32, i: u32) -> u32 {
    let byte = wbyte(o + i % 16u);
    return select(byte & 0xfu, byte >> 4u, i >= 16u);
}

// An FP8 E4M3 byte: sign, 4 exponent bits biased by 7, 3 mantissa bits, subnormal at 0.
fn e4m3(b: u32) -> f32 {
    let e = (b >> 3u) & 0xfu;
    let m = f32(b & 7u);
    var v = m / 8.0 * exp2(-6.0);
    if (e != 0u) { v = (1.0 + m / 8.0) * exp2(f32(e) - 7.0); }
    return select(v, -v, (b & 0x80u) != 0u);
}

fn iq4_level(q: u32) -> f32 {
    var levels = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                                1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
    return levels[q];
}

// Q4_K's and Q5_K's 6-bit scale (x) and minimum (y) of sub-block j, from 12 bytes at `s`.
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(wbyte(s + j) & 63u), f32(wbyte(s + j + 4u) & 63u));
    }
    let a = wbyte(s + j + 4u);
    let sc = (a & 0xfu) | ((wbyte(s + j - 4u) >> 6u) << 4u);
    let m = (a >> 4u) | ((wbyte(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

fn elem(ro: u32, e: u32) -> f32 {
    switch DTYPE {
        case 0u: { return bitcast<f32>(w[(ro >> 2u) + e]); }
        case 1u: { return wf16(ro + 2u * e); }
        case 30u: { return wbf16(ro + 2u * e); }
        case 8u: { // Q8_0
            let o = ro + (e / 32u) * 34u;
            let q = bitcast<i32>(wbyte(o + 2u + e % 32u) << 24u) >> 24u;
            return wf16(o) * f32(q);
        }
        case 2u: { // Q4_0
            let o = ro + (e / 32u) * 18u;
            return wf16(o) * (f32(nib32(o + 2u, e % 32u)) - 8.0);
        }
        case 3u: { // Q4_1
            let o = ro + (e / 32u) * 20u;
            return wf16(o) * f32(nib32(o + 4u, e % 32u)) + wf16(o + 2u);
        }
        case 6u: { // Q5_0
            let o = ro + (e / 32u) * 22u;
            let i = e % 32u;
            let q = nib32(o + 6u, i) | (((wu32(o + 2u) >> i) & 1u) << 4u);
            return wf16(o) * (f32(q) - 16.0);
        }
        case 7u: { // Q5_1
            let o = ro + (e / 32u) * 24u;
            let i = e % 32u;
            let q = nib32(o + 8u, i) | (((wu32(o + 4u) >> i) & 1u) << 4u);
            return wf16(o) * f32(q) + wf16(o + 2u);
        }
        case 1000u: { // FP8 E4M3 in blocks of 128 after an f32 scale
            let o = ro + (e / 128u) * 132u;
            return bitcast<f32>(w[o >> 2u]) * e4m3(wbyte(o + 4u + e % 128u));
        }
        case 1001u: { // FP8 E4M3 in blocks of 32 after an f32 scale
            let o = ro + (e / 32u) * 36u;
            return bitcast<f32>(w[o >> 2u]) * e4m3(wbyte(o + 4u + e % 32u));
        }
        case 20u: { // IQ4_NL
            let o = ro + (e / 32u) * 18u;
            return wf16(o) * iq4_level(nib32(o + 2u, e % 32u));
        }
        case 10u: { // Q2_K: scales[16], qs[64], d, dmin
            let o = ro + (e / 256u) * 84u;
            let k = e % 256u;
            let n = k / 128u;
            let j = (k % 128u) / 32u;
            let l = k % 32u;
            let sc = wbyte(o + n * 8u + j * 2u + l / 16u);
            let q = (wbyte(o + 16u + n * 32u + l) >> (2u * j)) & 3u;
            return wf16(o + 80u) * f32(sc & 0xfu) * f32(q) - wf16(o + 82u) * f32(sc >> 4u);
        }
        case 11u: { // Q3_K: hmask[32], qs[64], scales[12], d
            let o = ro + (e / 256u) * 110u;
            let k = e % 256u;
            let n = k / 128u;
            let j = (k % 128u) / 32u;
            let l = k % 32u;
            let is = n * 8u + j * 2u + l / 16u;
            let s = o + 96u;
            let low = (wbyte(s + is % 8u) >> (4u * (is / 8u))) & 0xfu;
            let high = (wbyte(s + 8u + is % 4u) >> (2u * (is / 4u))) & 3u;
            let scale = f32(i32(low | (high << 4u)) - 32);
            var q = i32((wbyte(o + 32u + n * 32u + l) >> (2u * j)) & 3u);
            if (((wbyte(o + l) >> (n * 4u + j)) & 1u) == 0u) { q -= 4; }
            return wf16(o + 108u) * scale * f32(q);
        }
        case 12u: { // Q4_K: d, dmin, scales[12], qs[128]
            let o = ro + (e / 256u) * 144u;
            let k = e % 256u;
            let j = k / 64u;
            let r = k % 64u;
            let sm = scale_min_k4(o + 4u, 2u * j + r / 32u);
            let byte = wbyte(o + 16u + j * 32u + r % 32u);
            let q = select(byte & 0xfu, byte >> 4u, r >= 32u);
            return wf16(o) * sm.x * f32(q) - wf16(o + 2u) * sm.y;
        }
        case 13u: { // Q5_K: d, dmin, scales[12], qh[32], qs[128]
            let o = ro + (e / 256u) * 176u;
            let k = e % 256u;
            let j = k / 64u;
            let r = k % 64u;
            let is = 2u * j + r / 32u;
            let sm = scale_min_k4(o + 4u, is);
            let l = r % 32u;
            let byte = wbyte(o + 48u + j * 32u + l);
            let q = select(byte & 0xfu, byte >> 4u, r >= 32u) | (((wbyte(o + 16u + l) >> is) & 1u) << 4u);
            return wf16(o) * sm.x * f32(q) - wf16(o + 2u) * sm.y;
        }
        case 14u: { // Q6_K: ql[128], qh[64], scales[16] (i8), d
            let o = ro + (e / 256u) * 210u;
            let k = e % 256u;
            let n = k / 128u;
            let g = (k % 128u) / 32u;
            let l = k % 32u;
            let lb = wbyte(o + n * 64u + l + (g & 1u) * 32u);
            let low = select(lb >> 4u, lb & 0xfu, g < 2u);
            let high = (wbyte(o + 128u + n * 32u + l) >> (2u * g)) & 3u;
            let q = i32(low | (high << 4u)) - 32;
            let sc = bitcast<i32>(wbyte(o + 192u + n * 8u + l / 16u + 2u * g) << 24u) >> 24u;
            return wf16(o + 208u) * f32(sc) * f32(q);
        }
        default: { // 23, IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]
            let o = ro + (e / 256u) * 136u;
            let k = e % 256u;
            let ib = k / 32u;
            let i = k % 32u;
            let sh = wbyte(o + 2u) | (wbyte(o + 3u) << 8u);
            let ls = ((wbyte(o + 4u + ib / 2u) >> (4u * (ib % 2u))) & 0xfu) | (((sh >> (2u * ib)) & 3u) << 4u);
            return wf16(o) * f32(i32(ls) - 32) * iq4_level(nib32(o + 8u + ib * 16u, i));
        }
    }
}
