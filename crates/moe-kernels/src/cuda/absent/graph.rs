//! CUDA-graph capture and replay in a build without the `cuda` feature: the same names as the
//! CUDA build; no device exists, so every method is unreachable by construction.

use std::convert::Infallible;
use std::fmt;

use moe_core::{Result, Tensor};

use super::CudaDevice;

/// Routing calls one captured graph may hold (the same bound as the CUDA build).
pub const MAX_CAPTURED_STATUS_WORDS: usize = 16;

/// A replayable CUDA graph (not constructible in this build).
pub struct DeviceGraph {
    never: Infallible,
}

impl fmt::Debug for DeviceGraph {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl DeviceGraph {
    pub fn launch(&self) -> Result<()> {
        match self.never {}
    }
    pub fn what(&self) -> &str {
        match self.never {}
    }
    pub fn device(&self) -> &CudaDevice {
        match self.never {}
    }
}

impl CudaDevice {
    pub fn capture<T>(&self, _what: &str, _f: impl FnOnce() -> Result<T>) -> Result<(DeviceGraph, T)> {
        match self.never {}
    }
    pub fn copy_into(&self, _dst: &mut Tensor, _src: &Tensor) -> Result<()> {
        match self.never {}
    }
    pub fn upload_into(&self, _dst: &mut Tensor, _src: &Tensor) -> Result<()> {
        match self.never {}
    }
}
