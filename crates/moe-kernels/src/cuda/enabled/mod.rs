//! The CUDA build of [`crate::cuda`]: cudarc underneath, kernels compiled by NVRTC at first use.
//!
//! - [`device`]: [`CudaDevice`], one per GPU: context, the one stream every kernel of the
//!   device is queued on, the module cache.
//! - [`storage`]: [`CudaStorage`], the device memory behind a [`moe_core::Tensor`], and the
//!   host <-> device copies.
//! - [`ffi`]: the `unsafe` of the layer (kernel launches, typed views of byte buffers), and
//!   [`ffi_cublaslt`] the one cuBLASLt call (the e4m3 GEMM of [`ceilings`]).
//! - [`compile`]: loading a module: the GPU bundle's ahead-of-time CUBIN, else the disk
//!   cache's, else NVRTC for the device's architecture ([`crate::cuda::aot`] lists them all);
//!   [`aot_build`] compiles the bundle's (`cargo xtask kernels`).
//! - [`graph`]: CUDA-graph capture of a device's stream and its replay ([`DeviceGraph`]).
//! - [`routing`], [`rows`], [`comm_rows`], [`experts`], [`ceilings`]: the device operations, each
//!   with its CUDA C source in `cuda/kernels/`.

mod aot_build;
mod ceilings;
mod comm_rows;
mod compile;
mod device;
mod experts;
mod ffi;
mod ffi_cublaslt;
mod graph;
mod routing;
mod rows;
mod storage;

pub use aot_build::{AotBuild, build_aot_kernels};
pub use ceilings::*;
pub use comm_rows::*;
pub use experts::*;
pub use routing::*;
pub use rows::*;

pub use device::{CudaDevice, CudaTimer};
pub use graph::{DeviceGraph, MAX_CAPTURED_STATUS_WORDS};
pub use storage::{CudaStorage, download};
