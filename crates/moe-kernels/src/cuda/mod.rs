//! CUDA: the per-device context ([`CudaDevice`]: stream, NVRTC module cache), device tensors
//! ([`CudaStorage`]) and the device kernels of the MoE layer.
//!
//! The same public names exist in every build. With the `cuda` feature they drive the GPU
//! through cudarc (dynamic loading: no CUDA toolkit is needed to build, the driver, NVRTC and
//! NCCL libraries are opened at first use). Without it ([`absent`]-backed) every constructor
//! returns [`moe_core::MoeError::NotCompiledWithCuda`], so callers compile unchanged and fail
//! with a typed error. `cfg` appears only on the `mod`/`use` lines below.

pub mod aot;
mod blocks;
mod route;

#[cfg(not(feature = "cuda"))]
mod absent;
#[cfg(feature = "cuda")]
mod enabled;

#[cfg(not(feature = "cuda"))]
pub use absent::*;
pub use aot::{KernelLoad, KernelOrigin, kernel_loads, kernel_loads_summary};
pub use blocks::OwnBlock;
#[cfg(feature = "cuda")]
pub use enabled::*;
pub use route::{ALLTOALL_ROUTE_MAX_RANKS, AllToAllRoute, RouteCounts};
