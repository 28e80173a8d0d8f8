//! Device row gathers and scatter-adds that the communication strategies pack and unpack exchanges with. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).
//!
//! The same signatures as the CUDA build; there are no device tensors here, so every call is
//! a caller's mistake reported as [`MoeError::NotCompiledWithCuda`].

use moe_core::{DType, MoeError, Result, Tensor};

use crate::cuda::{AllToAllRoute, OwnBlock};

/// Rows `idx[i]` of a device tensor (not available in this build).
pub fn gather_rows(_t: &Tensor, _idx: &[usize]) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// Parts' rows side by side as one byte row (not available in this build).
pub fn pack_rows(_parts: &[&Tensor]) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// The inverse of [`pack_rows`] (not available in this build).
pub fn unpack_rows(_packed: &Tensor, _fields: &[(DType, Vec<usize>)]) -> Result<Vec<Tensor>> {
    Err(MoeError::NotCompiledWithCuda)
}

/// Groups of rows summed in f32 (not available in this build).
pub fn segment_sum_rows(_t: &Tensor, _offsets: &[usize], _rows: &[usize], _dtype: DType) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// Groups of rows summed in f32, the listing on the device (not available in this build).
pub fn segment_sum_rows_indexed(
    _t: &Tensor,
    _index: &Tensor,
    _offsets_at: usize,
    _rows_at: usize,
    _groups: usize,
    _dtype: DType,
) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// Equal blocks summed element-wise in f32 (not available in this build).
pub fn sum_blocks(_t: &Tensor, _blocks: usize, _shape: Vec<usize>) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// Equal blocks summed element-wise in f32, one read in place (not available in this build).
pub fn sum_blocks_with(
    _peers: &Tensor,
    _own: Option<OwnBlock<'_>>,
    _blocks: usize,
    _shape: Vec<usize>,
) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// The all-to-all routing of a dispatch on the device (not available in this build).
pub fn alltoall_route(_slots: &Tensor, _owner: &Tensor, _world: usize) -> Result<AllToAllRoute> {
    Err(MoeError::NotCompiledWithCuda)
}

/// A dispatch's send rows gathered by a device routing (not available in this build).
pub fn gather_routed(_t: &Tensor, _route: &AllToAllRoute) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

/// The first rows of a device tensor, sharing its buffer (not available in this build).
pub fn truncate_rows(_t: &Tensor, _rows: usize) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}
