//! Accuracy criteria as data: TensorRT-LLM's per-quantization table (core spec §7.5, held by
//! each format's descriptor in `moe_core::quant_format`), the relative-L2 bounds this
//! workspace uses per activation dtype, and the HF fixture bounds.
//!
//! Two measures, because they answer different questions: `check_accuracy` (an element
//! mismatches when `|out - ref| > atol + rtol * |ref|`; pass iff the mismatch fraction is
//! below `1 - percent`) tolerates a few outliers the way quantized kernels need;
//! [`rel_l2`] (`||out - ref|| / ||ref||` in f64) is the single number for unquantized paths,
//! where every element should agree up to rounding.

use moe_core::{DType, QuantAlgo};

/// An element-wise criterion (`percent = 1.0` is TensorRT-LLM's `assert_close`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    /// Fraction of elements that must be within tolerance; a run passes iff the mismatch
    /// fraction is strictly below `1 - percent` (so `1.0` admits no mismatch at all).
    pub percent: f64,
}

impl Tolerance {
    pub const fn new(rtol: f64, atol: f64, percent: f64) -> Tolerance {
        Tolerance { rtol, atol, percent }
    }

    /// Every element within tolerance (`assert_close`).
    pub const fn close(rtol: f64, atol: f64) -> Tolerance {
        Tolerance {
            rtol,
            atol,
            percent: 1.0,
        }
    }
}

/// The §7.5 criterion of `algo`: its descriptor's (`moe_core::quant_format`, the reference
/// module's row for the default activation and shape; the variants the table lists for
/// GPT-OSS-style activations or large H are not encoded until a kernel needs them). The matrix's
/// outputs are of order 1, so a row whose absolute tolerance the table derives from the
/// reference magnitude (W8A16) takes the descriptor's order-1 value.
pub fn quant_tolerance(algo: QuantAlgo) -> Tolerance {
    let t = algo.descriptor().tolerance;
    Tolerance::new(t.rtol, t.atol, t.percent)
}

/// Relative-L2 bound of an unquantized layer against its oracle, by activation dtype.
///
/// f32: both sides accumulate in f32, so only summation order differs (1e-5, the HF fixture
/// bound). f16/bf16: backends may round intermediates (FC1 output, activation) to the
/// activation dtype at different points, each rounding costing up to 2^-11 (f16) or 2^-8
/// (bf16) relative; 5e-3 and 2e-2 leave room for that with a margin of several times the
/// errors measured on the matrix, while still catching any wrong expert, weight or row
/// (those give errors of order 1).
pub fn rel_l2_bound(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 5e-3,
        DType::BF16 => 2e-2,
        _ => 1e-5,
    }
}

/// Relative-L2 bound of a layer against the Hugging Face fixture outputs (`fixtures/hf/README.md`):
/// float32 1e-5, bfloat16 3e-2 (transformers rounds to bf16 between steps).
pub fn hf_rel_l2_bound(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 | DType::F16 => 3e-2,
        _ => 1e-5,
    }
}

/// What `check_accuracy` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyReport {
    pub numel: usize,
    pub mismatches: usize,
    pub mismatch_fraction: f64,
    pub max_abs_diff: f64,
    /// Index of the element with the largest absolute difference.
    pub worst_index: usize,
    pub rel_l2: f64,
    pub tolerance: Tolerance,
}

/// TensorRT-LLM's `check_accuracy`: `Ok` when the mismatch fraction is below
/// `1 - tol.percent`, `Err` with the numbers otherwise (and for a length mismatch or
/// non-finite values, which never pass).
pub fn check_accuracy(out: &[f32], reference: &[f32], tol: Tolerance) -> Result<AccuracyReport, String> {
    if out.len() != reference.len() {
        return Err(format!(
            "length mismatch: out has {} elements, reference {}",
            out.len(),
            reference.len()
        ));
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(format!("out[{i}] = {} is not finite", out[i]));
    }
    if let Some(i) = reference.iter().position(|v| !v.is_finite()) {
        return Err(format!("reference[{i}] = {} is not finite", reference[i]));
    }
    let mut mismatches = 0;
    let (mut max_abs_diff, mut worst_index) = (0.0f64, 0);
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        let diff = (f64::from(o) - f64::from(r)).abs();
        if diff > tol.atol + tol.rtol * f64::from(r).abs() {
            mismatches += 1;
        }
        if diff > max_abs_diff {
            max_abs_diff = diff;
            worst_index = i;
        }
    }
    let numel = out.len();
    let mismatch_fraction = if numel == 0 {
        0.0
    } else {
        mismatches as f64 / numel as f64
    };
    let report = AccuracyReport {
        numel,
        mismatches,
        mismatch_fraction,
        max_abs_diff,
        worst_index,
        rel_l2: rel_l2(out, reference),
        tolerance: tol,
    };
    // `percent = 1` must admit no mismatch, which `fraction < 1 - percent` (< 0) would not
    // express; compare counts in that case.
    let pass = if tol.percent >= 1.0 {
        mismatches == 0
    } else {
        mismatch_fraction < 1.0 - tol.percent
    };
    if pass {
        Ok(report)
    } else {
        Err(format!(
            "{mismatches}/{numel} elements ({:.2}%) outside atol {} + rtol {} (allowed < {:.2}%); max |diff| {:.3e} at {worst_index}; rel L2 {:.3e}",
            100.0 * mismatch_fraction,
            tol.atol,
            tol.rtol,
            100.0 * (1.0 - tol.percent).max(0.0),
            max_abs_diff,
            report.rel_l2
        ))
    }
}

/// `||a - b||_2 / ||b||_2` in f64 (`b` is the reference). Both zero gives 0; a zero
/// reference with a nonzero `a` gives infinity; any NaN gives NaN (never a pass).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        num += d * d;
        den += f64::from(y) * f64::from(y);
    }
    if num == 0.0 {
        return 0.0;
    }
    (num / den).sqrt()
}
