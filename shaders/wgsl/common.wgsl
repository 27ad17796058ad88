// Shared by every kernel (prepended by the runtime): the parameter block and the loaders that
// read stored weights, a word array of raw bytes, as f32.
//
// DTYPE: the format of the weights a kernel reads, GGML's number for it (see dequant.wgsl).

struct Params {
    a: u32, b: u32, c: u32, d: u32,
    e: u32, f: u32, g: u32, h: u32,
}

override DTYPE: u32 = 0u;

fn byte_in(word: u32, o: u32) -> u32 {
    return (word >> ((o & 3u) * 8u)) & 0xffu;
}

fn f16_in(word: u32, o: u32) -> f32 {
    // `o` is 2-aligned: the half sits in the low or the high 16 bits.
    return unpack2x16float(select(word & 0xffffu, word >> 16u, (o & 2u) != 0u)).x;
}

fn bf16_in(word: u32, o: u32) -> f32 {
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (o & 2u) != 0u));
}
