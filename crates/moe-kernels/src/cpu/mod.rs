//! Host kernels.
//!
//! - [`float_slice`]: typed views of f32/f16/bf16 host data and their widening to f32.
//! - [`permute`]: counting sort of `(token, k)` selections by local slot, row gathering.
//! - [`gemm`]: `A · B^T` with f32 activations and f32/f16/bf16 weights.
//! - [`activation`]: fused SwiGLU / GPT-OSS SwiGLU / ReLU² over FC1 rows.
//! - [`expert_mlp`]: one expert's FC1 → activation → FC2 over a block of rows.
//! - [`finalize`]: weighted sum of expert rows back into token order.
//! - [`scratch`]: per-task scratch pool for parallel workers.
//! - [`linear`]: dense linear layer for the model-side projections.

pub mod activation;
pub mod expert_mlp;
pub mod finalize;
pub mod float_slice;
pub mod gemm;
pub mod linear;
pub mod permute;
pub mod scratch;
