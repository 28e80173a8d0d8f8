//! The CUDA names in a build without the `cuda` feature: the same types and signatures as
//! the CUDA build, every constructor failing with [`MoeError::NotCompiledWithCuda`]. No value
//! of these types can exist (each holds an uninhabited field), so methods on them are
//! unreachable by construction rather than by a runtime check.

mod ceilings;
mod comm_rows;
mod experts;
mod graph;
mod routing;
mod rows;

pub use ceilings::*;
pub use comm_rows::*;
pub use experts::*;
pub use graph::*;
pub use routing::*;
pub use rows::*;

use std::convert::Infallible;
use std::fmt;

use moe_core::{DType, MoeError, Result, Tensor};

/// One GPU (not constructible in this build).
#[derive(Clone)]
pub struct CudaDevice {
    pub(crate) never: Infallible,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl CudaDevice {
    pub fn new(_ordinal: usize) -> Result<CudaDevice> {
        Err(MoeError::NotCompiledWithCuda)
    }
    pub fn count() -> usize {
        0
    }
    pub fn ordinal(&self) -> usize {
        match self.never {}
    }
    pub fn name(&self) -> &str {
        match self.never {}
    }
    pub fn sm(&self) -> u32 {
        match self.never {}
    }
    pub fn has_wgmma(&self) -> bool {
        match self.never {}
    }
    pub fn multiprocessors(&self) -> u32 {
        match self.never {}
    }
    pub fn location(&self) -> String {
        match self.never {}
    }
    pub fn synchronize(&self) -> Result<()> {
        match self.never {}
    }
    pub fn timer(&self) -> Result<CudaTimer> {
        match self.never {}
    }
    pub fn zeros(&self, _dtype: DType, _shape: Vec<usize>) -> Result<Tensor> {
        match self.never {}
    }
    pub fn upload(&self, _t: &Tensor) -> Result<Tensor> {
        match self.never {}
    }
}

/// Device time between two events (not constructible in this build).
pub struct CudaTimer {
    never: Infallible,
}

impl fmt::Debug for CudaTimer {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl CudaTimer {
    pub fn stop_ms(self) -> Result<f64> {
        match self.never {}
    }
}

/// Device memory of one tensor (not constructible in this build).
pub struct CudaStorage {
    pub(crate) never: Infallible,
}

impl fmt::Debug for CudaStorage {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl CudaStorage {
    /// No tensor of this build lives on a CUDA device.
    pub fn of<'t>(_t: &'t Tensor, _what: &str) -> Result<&'t CudaStorage> {
        Err(MoeError::NotCompiledWithCuda)
    }
    pub fn device(&self) -> &CudaDevice {
        match self.never {}
    }
}

/// Host tensors are returned as is; there are no device tensors in this build.
pub fn download(t: &Tensor) -> Result<Tensor> {
    if t.is_host() {
        Ok(t.clone())
    } else {
        Err(MoeError::NotCompiledWithCuda)
    }
}
