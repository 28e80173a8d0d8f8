//! The MoE layer: the assembler [`ConfigurableMoe`] and the factory ([`resolve_moe_impl`],
//! [`create_moe`]).
//!
//! This is the one crate that knows the concrete set of backends (the registry in
//! `registry.rs`); the assembler itself works only through the `moe-core` traits.
//!
//! ```ignore
//! let mut layer = moe::create_moe(config)?;
//! layer.load_weights(&weights)?;
//! let y = layer.forward(&x, &router_logits)?;
//! println!("{}", layer.report());
//! ```

mod assembler;
mod comm_factory;
mod comm_slot;
mod env;
mod factory;
mod migration;
mod registry;

pub use assembler::{ConfigurableMoe, ForwardOptions, LayerParts};
pub use comm_factory::COMM_NAMES;
pub use comm_slot::FallbackFactory;
pub use env::probe_environment;
pub use factory::{CreateOptions, create_moe, create_moe_with, resolve_moe_impl};
pub use registry::{BACKEND_NAMES, BackendEntry, REGISTRY};

/// Process groups a multi-rank layer runs over: in-process ranks (threads) always, MPI ranks
/// with the `mpi` feature. Re-exported so model code and tools reach them through the
/// assembler crate.
pub mod process_group {
    pub use moe_comm::InProcessGroup;
    #[cfg(feature = "mpi")]
    pub use moe_comm::MpiGroup;
}

/// CUDA devices (feature `cuda`): the device handle, device tensors and their copies, the
/// device-event timer, CUDA-graph capture and replay (`CudaDevice::capture`, `DeviceGraph`), the measured ceilings of a device and the log of kernel-module loads (`kernel_loads`: ahead of time, disk cache or NVRTC), re-exported so binaries and model
/// code reach them through the assembler crate. Without the feature the same names exist and
/// fail with `MoeError::NotCompiledWithCuda`.
pub mod cuda {
    pub use moe_kernels::cuda::{
        CudaDevice, CudaStorage, CudaTimer, DeviceGraph, KernelLoad, KernelOrigin, bf16_matmul_tflops,
        copy_bandwidth_gbps, download, fp8_matmul_tflops, kernel_loads, kernel_loads_summary,
    };
}

/// Tensor operations on any storage, re-exported for model code around the layer (router
/// gate linears, shared experts) so it does not reach into `moe-kernels`.
pub use moe_kernels::ops;
