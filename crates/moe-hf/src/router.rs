//! The router gate of a block: `logits = x @ W^T (+ b)`, `W` `[E, H]`.
//!
//! Families differ in precision: DeepSeek-V3 casts input and weight to f32 before the matmul
//! (its logits are f32); the others run the linear in the checkpoint dtype, so their logits
//! are rounded to it. GPT-OSS adds its router bias inside the linear (before top-k).

use moe_core::{DType, MoeError, Result, Tensor};

use crate::checkpoint::Checkpoint;
use crate::numerics::{linear_rounded, round_to};

/// Router gate weights, owned (they are small: `E × H`).
#[derive(Clone, Debug)]
pub struct Router {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Dtype the logits are rounded to (f32 for DeepSeek's f32 router).
    logits_dtype: DType,
}

impl Router {
    /// Loads `weight_name` (`[E, H]`) and optional `bias_name` (`[E]`), converted to `dtype`
    /// (the block's compute dtype). `f32_logits` keeps logits unrounded (DeepSeek).
    pub fn load(
        ckpt: &Checkpoint,
        weight_name: &str,
        bias_name: Option<&str>,
        experts: usize,
        hidden: usize,
        dtype: DType,
        f32_logits: bool,
    ) -> Result<Router> {
        let weight = load_float(ckpt, weight_name, &[experts, hidden], dtype)?;
        let bias = bias_name.map(|b| load_float(ckpt, b, &[experts], dtype)).transpose()?;
        Ok(Router {
            weight,
            bias,
            logits_dtype: if f32_logits { DType::F32 } else { dtype },
        })
    }

    /// Router logits `[T, E]` as f32 values: rounded to the dtype the family's reference
    /// produces them in, with exact ties of the rounded values broken by the unrounded value
    /// (see [`tie_break_rounded`]).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let exact = linear_rounded(x, &self.weight, self.bias.as_ref(), DType::F32)?;
        let v = tie_break_rounded(exact, self.logits_dtype);
        Tensor::from_f32(vec![x.rows(), self.weight.rows()], v)
    }
}

/// Rounds `exact` to `dtype` as the reference's bf16/f16 linear does, then nudges each value
/// by a tiny fraction (2^-10) of its rounding residual.
///
/// Why: a bf16 router produces exact ties (two experts' logits round to the same value) far
/// more often than an f32 one, and the reference's GPU top-k breaks them arbitrarily, while
/// our routing breaks ties toward the lower index. Ordering by the unrounded value instead is
/// the principled choice (rounding is monotone, so it never contradicts a strict order of the
/// rounded values) and it matched the transformers fixture where lower-index tie-breaking
/// did not (GPT-OSS bf16, token 85: experts 2 and 3 both at 12.9375). The nudge is at most
/// 2^-11 ulp, so routing weights computed from these logits stay those of the rounded values.
pub fn tie_break_rounded(mut exact: Vec<f32>, dtype: DType) -> Vec<f32> {
    if dtype == DType::F32 {
        return exact;
    }
    let mut rounded = exact.clone();
    round_to(dtype, &mut rounded);
    for (e, r) in exact.iter_mut().zip(&rounded) {
        let residual = *e - *r;
        *e = if r.is_finite() {
            *r + residual * (1.0 / 1024.0)
        } else {
            *r
        };
    }
    exact
}

/// Loads a float tensor, checks its shape (naming the real tensor) and converts it to `dtype`.
pub fn load_float(ckpt: &Checkpoint, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let view = ckpt.tensor(name)?;
    if !view.dtype.is_float_activation() {
        return Err(MoeError::UnsupportedModel {
            detail: format!(
                "tensor `{name}` has dtype {}; quantized router/shared-expert weights are not supported yet",
                view.dtype
            ),
        });
    }
    view.expect_shape(name, shape)?;
    view.to_tensor(name)?.to_dtype(dtype)
}
