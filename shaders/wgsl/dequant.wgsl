// Reading stored weights (prepended to the kernels that bind them as `w`): element `e` of the
// row that starts at byte `ro`, in the format DTYPE.

fn wbyte(o: u32) -> u32 { return byte_in(w[o >> 2u], o); }
fn wf16(o: u32) -> f32 { return f16_in(w[o >> 2u], o); }
fn wbf16(o: u32) -> f32 { return bf16_in(w[o >> 2u], o); }

fn elem(ro: u32, e: u32) -> f32 {
    switch DTYPE {
        case 0u: { return bitcast<f32>(w[(ro >> 2u) + e]); }
        case 1u: { return wf16(ro + 2u * e); }
        case 2u: { return wbf16(ro + 2u * e); }
        case 3u: {
            let o = ro + (e / 32u) * 34u;
            let q = bitcast<i32>(wbyte(o + 2u + e % 32u) << 24u) >> 24u;
            return wf16(o) * f32(q);
        }
        default: {
            let o = ro + (e / 32u) * 20u;
            let i = e % 32u;
            let byte = wbyte(o + 4u + i % 16u);
            let q = select(byte & 0xfu, byte >> 4u, i >= 16u);
            return wf16(o) * f32(q) + wf16(o + 2u);
        }
    }
}

