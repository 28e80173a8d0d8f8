//! The expert computation of one MoE layer on the device: weights uploaded in kernel layouts, token permutation, grouped GEMMs with the activation fused, finalize. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).

use std::convert::Infallible;
use std::fmt;

use moe_core::{DType, MoeError, Result, Tensor};

use super::CudaDevice;
use crate::cpu::act_quant::ActQuant;
use crate::cpu::expert_mlp::{ExpertView, MlpDims};

/// No tensor of this build lives on a device.
pub fn qdq_device(_q: &ActQuant, _x: &Tensor) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// A rank's expert weights on one device (not constructible in this build).
pub struct DeviceExperts {
    never: Infallible,
}

impl fmt::Debug for DeviceExperts {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.never {}
    }
}

impl DeviceExperts {
    pub fn upload(dev: &CudaDevice, _dtype: DType, _dims: MlpDims, _slots: &[ExpertView<'_>]) -> Result<DeviceExperts> {
        match dev.never {}
    }
    pub fn device(&self) -> &CudaDevice {
        match self.never {}
    }
    pub fn bytes(&self) -> usize {
        match self.never {}
    }
    pub fn forward(
        &self,
        _x: &Tensor,
        _slots: &Tensor,
        _scales: Option<&Tensor>,
        _slot_start: usize,
        _out_dtype: DType,
    ) -> Result<Tensor> {
        match self.never {}
    }
}
