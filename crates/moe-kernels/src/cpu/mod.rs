//! Host kernels.
//!
//! - [`float_slice`]: typed views of f32/f16/bf16 host data and their widening to f32.
//! - [`weight_slice`]: weight matrices in a float dtype or a quantized format, decoded to f32
//!   element by element or row block by row block.
//! - [`act_quant`]: the activation quantize-dequantize of the quantized formats.
//! - [`permute`]: counting sort of `(token, k)` selections by local slot, row gathering.
//! - [`gemm`]: `A · B^T` with f32 activations and float or quantized weights.
//! - [`simd_gemm`]: its AVX-512 / AVX2 kernels (bf16 widened in registers, FP8 tiles
//!   decoded in L1, FP8 and packed 4/8-bit rows decoded in registers for decode shapes),
//!   chosen at run time.
//! - [`activation`]: fused SwiGLU / GPT-OSS SwiGLU / ReLU² over FC1 rows.
//! - [`expert_mlp`]: one expert's FC1 → activation → FC2 over a block of rows.
//! - [`finalize`]: weighted sum of expert rows back into token order.
//! - [`scratch`]: per-task scratch pool for parallel workers.
//! - [`linear`]: dense linear layer for the model-side projections.

pub mod act_quant;
pub mod activation;
pub mod expert_mlp;
pub mod finalize;
pub mod float_slice;
pub mod gemm;
pub mod linear;
pub mod permute;
pub mod scratch;
pub mod simd_gemm;
pub mod weight_slice;
