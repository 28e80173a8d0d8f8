//! MoE backends on the host: [`ReferenceBackend`] (`"reference"`), the plain-loop f64 oracle
//! every other backend is tested against, and [`CpuBackend`] (`"cpu"`), the grouped-GEMM CPU
//! backend (tokens permuted by slot, one GEMM per expert and row block for FC1 with the
//! activation fused after it, one for FC2, weighted scatter-add back to token order).
//!
//! [`FusedCpuBackend`] (`"cpu-fused"`) runs the CPU backend's kernels with the cross-rank
//! exchange inside `run_moe` (`SchedulerKind::FusedComm`).
//!
//! [`CudaBackend`] (`"cuda"`) runs the same lifecycle with the experts on a GPU (feature `cuda`;
//! without it the type exists and refuses with `NotCompiledWithCuda`).
//!
//! The host backends implement [`moe_core::MoeBackend`] with the same capabilities (unquantized f32/f16/
//! bf16 experts and every quantized format of `moe-quant` — FP8 per tensor, FP8 block, NVFP4,
//! MXFP4, INT4 group-wise, INT8 per channel — on the activation dtypes of
//! [`capabilities::QUANT_DTYPES`]; all activations, bias, TP, EP including uneven expert
//! counts, EPLB slots) and share their capability gate ([`capabilities`]), the validation of
//! `run_moe` inputs (`inputs`), the weight lifecycle (`lifecycle`) and the per-slot views of
//! the quant method (`views`); they differ only in `run_moe`. Quantized weights stay packed:
//! the CPU backend's GEMMs decode them a block of rows at a time, the reference decodes one
//! element at a time, and both apply the format's activation quantization.

pub mod capabilities;
pub mod cpu;
pub mod cpu_fused;
pub mod cuda;
mod inputs;
mod lifecycle;
pub mod reference;
mod views;

pub use cpu::CpuBackend;
pub use cpu_fused::FusedCpuBackend;
pub use cuda::CudaBackend;
pub use reference::ReferenceBackend;
