//! The finite-weight check of one layer's MoE block: every floating-point tensor under the
//! block's prefix (router gate, routed and shared experts, biases, quantization scales) is
//! scanned for NaN and infinity before the block is built.
//!
//! A NaN in one expert's weights turns every token routed to it into NaN and the whole
//! output with it, with a successful exit; refusing the checkpoint at load, naming the tensor
//! and the element, is the useful failure. The scan reads the stored bits (no conversion),
//! so it runs at memory bandwidth; trusted checkpoints can skip it (`moe run --trust-weights`).

use std::path::Path;

use moe_core::{MoeError, Result};
use safetensors::Dtype;

use crate::checkpoint::Checkpoint;
use crate::config::HfConfig;
use crate::names::BlockNames;

/// What a finite check covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FiniteReport {
    pub tensors: usize,
    pub elements: usize,
    pub bytes: usize,
}

/// Index of the first non-finite element of `bytes` stored as `dtype`, `None` when all are
/// finite or the dtype has no non-finite encodings (integers, packed FP4).
pub fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    // Each format's exponent field all ones is infinity or NaN (E4M3FN: only S.1111.111 is
    // NaN, it has no infinity; E8M0: 0xFF is NaN).
    fn find<const N: usize>(bytes: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<usize> {
        bytes
            .chunks_exact(N)
            .position(|c| bad(<[u8; N]>::try_from(c).unwrap_or([0; N])))
    }
    match dtype {
        Dtype::F64 => find::<8>(bytes, |b| !f64::from_le_bytes(b).is_finite()),
        Dtype::F32 => find::<4>(bytes, |b| u32::from_le_bytes(b) & 0x7f80_0000 == 0x7f80_0000),
        Dtype::F16 => find::<2>(bytes, |b| u16::from_le_bytes(b) & 0x7c00 == 0x7c00),
        Dtype::BF16 => find::<2>(bytes, |b| u16::from_le_bytes(b) & 0x7f80 == 0x7f80),
        Dtype::F8_E4M3 => find::<1>(bytes, |[b]| b & 0x7f == 0x7f),
        Dtype::F8_E5M2 => find::<1>(bytes, |[b]| b & 0x7c == 0x7c),
        Dtype::F8_E8M0 => find::<1>(bytes, |[b]| b == 0xff),
        _ => None,
    }
}

/// Checks every floating-point tensor of `ckpt` whose name starts with `prefix`; the error
/// names the first non-finite one, its flat element index and its file.
pub fn check_finite(ckpt: &Checkpoint, prefix: &str) -> Result<FiniteReport> {
    let mut report = FiniteReport::default();
    for name in ckpt.names().filter(|n| n.starts_with(prefix)) {
        let (dtype, shape, bytes) = ckpt.raw(name)?;
        if let Some(i) = first_non_finite(dtype, bytes) {
            let at = match shape {
                [_, cols] if *cols > 0 => format!("element {i} (row {}, column {})", i / cols, i % cols),
                _ => format!("element {i}"),
            };
            let file = ckpt.file_of(name).map(|p| p.display().to_string()).unwrap_or_default();
            return Err(MoeError::NonFinite {
                what: name.to_string(),
                location: format!(
                    "{at} of {file} (skip this check with --trust-weights only for checkpoints you trust)"
                ),
            });
        }
        report.tensors += 1;
        report.elements += shape.iter().product::<usize>();
        report.bytes += bytes.len();
    }
    Ok(report)
}

/// [`check_finite`] of the MoE block of `layer` of the checkpoint in `dir`.
pub fn check_layer_finite(dir: &Path, layer: usize) -> Result<FiniteReport> {
    let hf = HfConfig::from_dir(dir)?;
    hf.check_layer(layer)?;
    let ckpt = Checkpoint::open(dir)?;
    let names = BlockNames::resolve(hf.family, layer, &ckpt)?;
    check_finite(&ckpt, &names.prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_format_finds_its_non_finite_codes() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[1.0, -0.0, f32::MAX])), None);
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[1.0, 2.0, f32::NAN])), Some(2));
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[f32::NEG_INFINITY])), Some(0));
        let bf = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // bf16 1.0 = 0x3f80, +inf = 0x7f80, NaN = 0x7fc0; f16 inf = 0x7c00, max = 0x7bff.
        assert_eq!(first_non_finite(Dtype::BF16, &bf(&[0x3f80, 0xff80])), Some(1));
        assert_eq!(first_non_finite(Dtype::BF16, &bf(&[0x3f80, 0x7f7f])), None);
        assert_eq!(first_non_finite(Dtype::F16, &bf(&[0x7bff, 0x7c00])), Some(1));
        // E4M3FN: 0x7e is 448 (the largest finite), 0x7f and 0xff are NaN.
        assert_eq!(first_non_finite(Dtype::F8_E4M3, &[0x7e, 0xfe, 0xff]), Some(2));
        assert_eq!(first_non_finite(Dtype::F8_E8M0, &[0xfe, 0xff]), Some(1));
        assert_eq!(first_non_finite(Dtype::I8, &[0xff, 0x7f]), None);
        assert_eq!(first_non_finite(Dtype::F64, &f64::NAN.to_le_bytes()), Some(0));
    }
}
