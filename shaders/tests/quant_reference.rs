//! The scalar reference dequantization of every quantized format against the `gguf` Python
//! package's, on the random blocks of `testdata/quant/blocks.safetensors`
//! (`testdata/quant/make_reference.py` made them).

use baton_shaders::cpu::dequantize_row;
use baton_shaders::{DType, ALL_DTYPES};
use safetensors::SafeTensors;

#[test]
fn every_quantized_format_matches_gguf_py() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/quant/blocks.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    // FP8 blocks are Baton's own (see `quant/fp8.rs` for their tests).
    for dtype in ALL_DTYPES
        .into_iter()
        .filter(|d| d.block_len() > 1 && d.in_gguf())
    {
        let name = dtype.name().to_uppercase();
        let raw = st.tensor(&format!("{name}.bytes")).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("{name}.values"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let blocks = raw.data().len() / dtype.block_bytes();
        assert_eq!(blocks * dtype.block_len(), want.len(), "{name}");
        let mut got = vec![0f32; want.len()];
        dequantize_row(dtype, raw.data(), &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
                "{name} element {i}: {g} vs gguf-py {w}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 12);
    assert!(DType::from_ggml_type(12) == Some(DType::Q4K));
}
