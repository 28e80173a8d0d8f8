//! Precision helpers for the model-side math around the layer (router gate, shared experts).
//!
//! The layer's HF reference runs every module in the checkpoint dtype: each linear
//! accumulates in f32 and rounds its output to bf16/f16, and each element-wise op (SiLU,
//! product, sigmoid, sum) rounds again. We compute in f32 and round at the same points, so a
//! bf16 block reproduces the reference's rounding instead of being "more exact" than it —
//! which matters most for the router, where a rounded logit can flip a near-tie.

use half::{bf16, f16};
use moe_core::{DType, Result, Tensor};

/// Rounds f32 values in place to the precision of `dtype` (no-op for f32).
pub fn round_to(dtype: DType, v: &mut [f32]) {
    match dtype {
        DType::BF16 => v.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32()),
        DType::F16 => v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32()),
        _ => {}
    }
}

/// `x @ w^T (+ b)`, accumulated in f32, rounded to `dtype` as a linear module of that dtype does.
pub fn linear_rounded(x: &Tensor, w: &Tensor, b: Option<&Tensor>, dtype: DType) -> Result<Vec<f32>> {
    let y = moe::ops::linear(x, w, b)?;
    let mut v = y.as_f32("linear output")?.to_vec();
    round_to(dtype, &mut v);
    Ok(v)
}

/// SiLU, `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Logistic sigmoid.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
