//! Compute kernels of the MoE runtime.
//!
//! [`ops`] holds the operations schedulers and backends call on tensors; each dispatches on
//! where the tensor's storage lives. [`cpu`] holds the host kernels: routing execution,
//! token permutation by expert, GEMMs and fused activations.
//! [`codec`] holds the bit-exact number formats of quantized experts (FP8 e4m3, FP4 e2m1,
//! UE8M0, INT4/INT8).
//! [`cuda`] holds the per-device context, device tensors and the CUDA kernels (feature `cuda`;
//! without it the same names exist and fail with `MoeError::NotCompiledWithCuda`).

pub mod codec;
pub mod cpu;
pub mod cuda;
pub mod ops;
