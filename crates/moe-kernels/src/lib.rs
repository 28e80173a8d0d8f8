//! Compute kernels of the MoE runtime.
//!
//! [`ops`] holds the operations schedulers and backends call on tensors; each dispatches on
//! where the tensor's storage lives. [`cpu`] holds the host kernels: routing execution,
//! token permutation by expert, GEMMs and fused activations.
//! CUDA kernels arrive behind the `cuda` feature with the same names.

pub mod cpu;
pub mod ops;
