//! Routing of router logits on the device: every method of `moe_core::RoutingMethod`, in f32, with the CPU's tie rule. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).

use std::convert::Infallible;

use moe_core::{MoeError, Result, RoutingMethod, Tensor};

/// Routing computed on a device (not constructible in this build).
#[derive(Clone, Debug)]
pub struct DeviceRouting {
    pub ids: Tensor,
    pub weights: Option<Tensor>,
    never: Infallible,
}

impl DeviceRouting {
    pub fn status(&self) -> Option<&Tensor> {
        match self.never {}
    }
    pub fn check(&self) -> Result<()> {
        match self.never {}
    }
    pub fn into_checked(self) -> Result<(Tensor, Option<Tensor>)> {
        match self.never {}
    }
    pub fn into_deferred(self) -> Result<(Tensor, Option<Tensor>)> {
        match self.never {}
    }
}

/// No tensor of this build lives on a CUDA device.
pub fn route_device(_method: &RoutingMethod, _logits: &Tensor) -> Result<DeviceRouting> {
    Err(MoeError::NotCompiledWithCuda)
}
