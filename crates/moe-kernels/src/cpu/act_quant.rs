//! Activation quantization of the quantized formats, as quantize-dequantize (QDQ) in f32.
//!
//! The host kernels multiply f32 activations by decoded weights; a format whose GEMM reads
//! quantized activations is reproduced by rounding the activations exactly as its quantizer
//! would and decoding them again before the GEMM. That is the format's definition (TensorRT-LLM
//! computes `Σ (q_x · s_x)(q_w · s_w)`, the same sum up to f32 accumulation order), so both host
//! backends apply the same [`qdq_rows`] to the FC1 input rows and to the activation output
//! before FC2.
//!
//! - FP8 per-tensor, static (`FP8QDQ`): `x' = e4m3_sat(x / scale) * scale`, `scale` the
//!   checkpoint's dequant input scale (max over experts).
//! - FP8 dynamic groups (DeepSeek 1x128): per row, per group of `group` columns,
//!   `s = amax / 448`, `x' = e4m3_sat(x / s) * s`. A group whose `s` is 0 (all zeros) is left
//!   as is. A short last group (cols not a multiple of `group`) uses its own amax.
//! - NVFP4 (spec A.3.7): `g` = the static global quantization scale (`1 / max input_scale`);
//!   per row, per 16 columns: `sf = e4m3_sat(g * (vmax / 6))`, `q = e2m1(x * g / sf)`,
//!   `x' = q * sf / g`; a block whose `sf` is 0 becomes zeros (the kernel's output scale is 0
//!   there).
//!
//! Non-finite inputs never panic: NaN stays NaN through FP8 (FP4 has no NaN and gives 0), and an
//! infinite amax makes its group non-finite.

use moe_core::{MoeError, Result};

use super::weight_slice::NVFP4_BLOCK;
use crate::codec::fp4::{E2M1_MAX, e2m1_to_f32, f32_to_e2m1};
use crate::codec::fp8::{E4M3_MAX, e4m3_to_f32_lut, f32_to_e4m3_sat};

/// How a GEMM input is quantized (see the module docs for each rule).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum ActQuant {
    /// 16/32-bit activations: no rounding.
    #[default]
    None,
    /// Static per-tensor FP8 with the dequant scale `scale` (`x ≈ q * scale`).
    Fp8PerTensor { scale: f32 },
    /// Dynamic FP8 per row and group of `group` columns (`1 x group`).
    Fp8Group { group: usize },
    /// Dynamic NVFP4 blocks of 16 with the static global quantization scale `global_scale`.
    Nvfp4 { global_scale: f32 },
}

impl ActQuant {
    /// True when activations are used as they are.
    pub fn is_none(&self) -> bool {
        matches!(self, ActQuant::None)
    }
}

fn positive_finite(what: &str, v: f32) -> Result<f32> {
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(MoeError::config(
            what,
            format!("must be a positive finite number, got {v}"),
        ))
    }
}

/// Quantizes and dequantizes the rows of `data` (`[rows, cols]` row-major) in place as `q`
/// prescribes. Errors (never panics) on a ragged buffer, a zero group or a scale that is not
/// positive and finite.
pub fn qdq_rows(q: &ActQuant, data: &mut [f32], cols: usize) -> Result<()> {
    if q.is_none() || data.is_empty() {
        return Ok(());
    }
    if cols == 0 || !data.len().is_multiple_of(cols) {
        return Err(MoeError::shape(
            "activation rows",
            format!("[rows, {cols}]"),
            &[data.len()],
        ));
    }
    match *q {
        ActQuant::None => {}
        ActQuant::Fp8PerTensor { scale } => {
            let scale = positive_finite("fp8 activation scale", scale)?;
            for v in data.iter_mut() {
                *v = fp8_value(fp8_code(*v, scale), scale);
            }
        }
        ActQuant::Fp8Group { group } => {
            if group == 0 {
                return Err(MoeError::config("fp8 activation group", "must be at least 1"));
            }
            for row in data.chunks_exact_mut(cols) {
                row.chunks_mut(group).for_each(qdq_fp8_group);
            }
        }
        ActQuant::Nvfp4 { global_scale } => {
            let g = positive_finite("nvfp4 activation global scale", global_scale)?;
            for row in data.chunks_exact_mut(cols) {
                row.chunks_mut(NVFP4_BLOCK).for_each(|b| qdq_nvfp4_block(b, g));
            }
        }
    }
    Ok(())
}

/// FP8 activations as codes (see [`quantize_fp8_rows`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Rows {
    pub codes: Vec<u8>,
    pub scales: Option<Vec<f32>>,
}

/// FP8 activations as they travel between ranks: E4M3 codes `[rows, cols]` and, for dynamic
/// groups, one f32 scale per row and group (`[rows, ceil(cols / group)]`, the group's `s`; 0
/// where the group's amax is 0). `None` for other quantizations, which travel as values.
/// [`dequantize_fp8_rows`] of the result equals [`qdq_rows`] bit for bit.
pub fn quantize_fp8_rows(q: &ActQuant, data: &[f32], cols: usize) -> Result<Option<Fp8Rows>> {
    check_rows(data.len(), cols)?;
    match *q {
        ActQuant::Fp8PerTensor { scale } => {
            let scale = positive_finite("fp8 activation scale", scale)?;
            Ok(Some(Fp8Rows {
                codes: data.iter().map(|&v| fp8_code(v, scale)).collect(),
                scales: None,
            }))
        }
        ActQuant::Fp8Group { group } => {
            if group == 0 {
                return Err(MoeError::config("fp8 activation group", "must be at least 1"));
            }
            let mut codes = Vec::with_capacity(data.len());
            let mut scales = Vec::with_capacity(data.len().div_ceil(cols.max(1)) * cols.div_ceil(group));
            for row in data.chunks_exact(cols) {
                for g in row.chunks(group) {
                    // s = 0: the codes of the values themselves (zeros, or NaN), which decode
                    // to what qdq leaves in place.
                    let s = fp8_group_scale(g);
                    codes.extend(g.iter().map(|&v| fp8_code(v, s)));
                    scales.push(s);
                }
            }
            Ok(Some(Fp8Rows {
                codes,
                scales: Some(scales),
            }))
        }
        ActQuant::None | ActQuant::Nvfp4 { .. } => Ok(None),
    }
}

/// The values of FP8 activations from [`quantize_fp8_rows`]: `code * scale` in f32 (`s = 0`:
/// the code's own value). Errors on a buffer or scale table of the wrong size.
pub fn dequantize_fp8_rows(q: &ActQuant, codes: &[u8], scales: Option<&[f32]>, cols: usize) -> Result<Vec<f32>> {
    check_rows(codes.len(), cols)?;
    match (*q, scales) {
        (ActQuant::Fp8PerTensor { scale }, None) => {
            let scale = positive_finite("fp8 activation scale", scale)?;
            Ok(codes.iter().map(|&c| fp8_value(c, scale)).collect())
        }
        (ActQuant::Fp8Group { group }, Some(scales)) if group > 0 => {
            let per_row = cols.div_ceil(group);
            let rows = codes.len() / cols.max(1);
            if scales.len() != rows * per_row {
                return Err(MoeError::shape(
                    "fp8 activation scales",
                    format!("[{rows}, {per_row}]"),
                    &[scales.len()],
                ));
            }
            let mut out = Vec::with_capacity(codes.len());
            for (r, row) in codes.chunks_exact(cols).enumerate() {
                for (g, part) in row.chunks(group).enumerate() {
                    let s = scales[r * per_row + g];
                    out.extend(part.iter().map(|&c| fp8_value(c, s)));
                }
            }
            Ok(out)
        }
        (q, scales) => Err(MoeError::config(
            "fp8 activation payload",
            format!(
                "{q:?} with {} scales cannot be decoded",
                if scales.is_some() { "group" } else { "no" }
            ),
        )),
    }
}

fn check_rows(len: usize, cols: usize) -> Result<()> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(MoeError::shape("activation rows", format!("[rows, {cols}]"), &[len]));
    }
    Ok(())
}

/// Largest |x| of a group; NaN elements are skipped (`f32::max` ignores NaN).
fn amax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// One dynamic FP8 group: `s = amax / 448`, `x' = e4m3_sat(x / s) * s`.
fn qdq_fp8_group(g: &mut [f32]) {
    let s = fp8_group_scale(g);
    if s == 0.0 {
        return;
    }
    for v in g.iter_mut() {
        *v = fp8_value(fp8_code(*v, s), s);
    }
}

/// The scale of a dynamic FP8 group: its amax / 448 (0 for a group of zeros).
fn fp8_group_scale(g: &[f32]) -> f32 {
    amax(g) / E4M3_MAX
}

/// The E4M3 code of `v` under scale `s` (`s = 0`: the code of `v` itself, 0 or NaN).
fn fp8_code(v: f32, s: f32) -> u8 {
    f32_to_e4m3_sat(if s == 0.0 { v } else { v / s })
}

/// The value of `code` under scale `s` (`s = 0`: the code's own value).
fn fp8_value(code: u8, s: f32) -> f32 {
    let v = e4m3_to_f32_lut(code);
    if s == 0.0 { v } else { v * s }
}

/// One NVFP4 block with global quantization scale `g` (see the module docs).
fn qdq_nvfp4_block(b: &mut [f32], g: f32) {
    let sf = e4m3_to_f32_lut(f32_to_e4m3_sat(g * (amax(b) / E2M1_MAX)));
    if sf == 0.0 || !sf.is_finite() {
        // TensorRT-LLM's quantizer uses an output scale of 0 here: every code is 0.
        b.fill(0.0);
        return;
    }
    for v in b.iter_mut() {
        *v = e2m1_to_f32(f32_to_e2m1(*v * g / sf)) * sf / g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_per_tensor_rounds_to_the_e4m3_grid_times_scale() {
        // scale 0.5: 1.3 / 0.5 = 2.6 -> e4m3 2.5 (spacing 0.25 in [2, 4)) -> 1.25;
        // 1000 saturates to 448 -> 224; -0.01 / 0.5 = -0.02 -> subnormal grid 2^-9: 10 * 2^-9.
        let mut v = [1.3, 1000.0, -0.01];
        qdq_rows(&ActQuant::Fp8PerTensor { scale: 0.5 }, &mut v, 3).unwrap();
        assert_eq!(v[0], 1.25);
        assert_eq!(v[1], 224.0);
        assert_eq!(v[2], -10.0 / 512.0 * 0.5);
        // Idempotent: quantized values are fixed points.
        let before = v;
        qdq_rows(&ActQuant::Fp8PerTensor { scale: 0.5 }, &mut v, 3).unwrap();
        assert_eq!(v, before);
    }

    #[test]
    fn fp8_groups_scale_by_their_own_amax() {
        // Two rows of two groups of 2: each group's largest element maps to 448.
        let mut v = [3.5, 1.0, 0.0, 0.0, 100.0, -3.0, 1e-3, 2e-3];
        qdq_rows(&ActQuant::Fp8Group { group: 2 }, &mut v, 4).unwrap();
        // s = 3.5 / 448 = 2^-7 exactly: 3.5 -> 448, 1 -> 128, both on the grid.
        assert_eq!(&v[..2], &[3.5, 1.0]);
        assert_eq!(&v[2..4], &[0.0, 0.0]); // amax 0: untouched
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs();
        assert!(close(v[4], 100.0), "{}", v[4]);
        // -3 / (100/448) = -13.44 -> -13 (spacing 1 in [8, 16)) -> -13 * 100/448.
        assert!(close(v[5], -13.0 * 100.0 / 448.0), "{}", v[5]);
        assert!(close(v[7], 2e-3), "{}", v[7]);
    }

    #[test]
    fn nvfp4_block_follows_the_spec_formula() {
        // g = 1, block of 16: vmax 6 -> sf = e4m3(1) = 1; values round to the e2m1 grid.
        let mut v = [0.0f32; 16];
        v[0] = 6.0;
        v[1] = 2.4; // -> 2
        v[2] = -0.3; // -> -0.5
        v[3] = 0.2; // -> 0
        qdq_rows(&ActQuant::Nvfp4 { global_scale: 1.0 }, &mut v, 16).unwrap();
        assert_eq!(&v[..4], &[6.0, 2.0, -0.5, 0.0]);
        // g = 2, vmax 3: sf = e4m3(2 * 0.5) = 1; x' = e2m1(2x) / 2.
        let mut w = [
            3.0f32, 1.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        qdq_rows(&ActQuant::Nvfp4 { global_scale: 2.0 }, &mut w, 16).unwrap();
        assert_eq!(&w[..2], &[3.0, 1.0]);
        // An all-zero block, and a tail block shorter than 16 (cols = 20).
        let mut z = [0.0f32; 20];
        z[17] = 1.0;
        qdq_rows(&ActQuant::Nvfp4 { global_scale: 6.0 }, &mut z, 20).unwrap();
        assert_eq!(z[17], 1.0);
        assert!(z[..16].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn fp8_payload_decodes_to_the_qdq_values_bit_for_bit() {
        // Random values over many magnitudes, zero groups, NaN and infinities, a short last group.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let cols = 300;
        let mut data: Vec<f32> = (0..4 * cols)
            .map(|_| {
                let r = next();
                let mag = 2f32.powi((r % 40) as i32 - 20);
                let unit = (r >> 32) as f32 / u32::MAX as f32 - 0.5;
                unit * mag
            })
            .collect();
        data[cols..cols + 128].fill(0.0);
        data[2 * cols + 5] = f32::NAN;
        data[3 * cols + 7] = f32::INFINITY;
        for q in [
            ActQuant::Fp8Group { group: 128 },
            ActQuant::Fp8PerTensor { scale: 0.01 },
        ] {
            let mut want = data.clone();
            qdq_rows(&q, &mut want, cols).unwrap();
            let Fp8Rows { codes, scales } = quantize_fp8_rows(&q, &data, cols).unwrap().unwrap();
            assert_eq!(codes.len(), data.len(), "{q:?}: one byte per element");
            if let Some(s) = &scales {
                assert_eq!(s.len(), 4 * cols.div_ceil(128), "{q:?}: one scale per row and group");
            }
            let got = dequantize_fp8_rows(&q, &codes, scales.as_deref(), cols).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{q:?} element {i}: {g} vs {w}"
                );
            }
        }
        assert!(quantize_fp8_rows(&ActQuant::None, &data, cols).unwrap().is_none());
        // Wrong sizes and mismatched schemes are errors.
        let q = ActQuant::Fp8Group { group: 128 };
        let Fp8Rows { codes, scales } = quantize_fp8_rows(&q, &data, cols).unwrap().unwrap();
        let scales = scales.unwrap();
        assert!(dequantize_fp8_rows(&q, &codes, Some(&scales[1..]), cols).is_err());
        assert!(dequantize_fp8_rows(&q, &codes, None, cols).is_err());
        assert!(dequantize_fp8_rows(&q, &codes[1..], Some(&scales), cols).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut v = [1.0f32; 6];
        assert!(qdq_rows(&ActQuant::Fp8PerTensor { scale: 0.0 }, &mut v, 3).is_err());
        assert!(qdq_rows(&ActQuant::Fp8PerTensor { scale: f32::NAN }, &mut v, 3).is_err());
        assert!(qdq_rows(&ActQuant::Fp8Group { group: 0 }, &mut v, 3).is_err());
        assert!(qdq_rows(&ActQuant::Nvfp4 { global_scale: -1.0 }, &mut v, 3).is_err());
        assert!(qdq_rows(&ActQuant::Fp8Group { group: 2 }, &mut v, 4).is_err());
        assert!(qdq_rows(&ActQuant::Fp8Group { group: 2 }, &mut v, 0).is_err());
        qdq_rows(&ActQuant::None, &mut v, 4).unwrap();
        // Non-finite data: no panic.
        let mut w = [f32::NAN, f32::INFINITY, 1.0, -1.0];
        qdq_rows(&ActQuant::Fp8Group { group: 4 }, &mut w, 4).unwrap();
        qdq_rows(&ActQuant::Nvfp4 { global_scale: 1.0 }, &mut w, 4).unwrap();
    }
}
