//! Row operations on device tensors: narrow, concatenate, pad, scale rows, cast. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).

use moe_core::{DType, MoeError, Result, Tensor};

pub fn narrow_rows_device(_t: &Tensor, _start: usize, _len: usize) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

pub fn concat_rows_device(_parts: &[Tensor]) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

pub fn pad_rows_device(_t: &Tensor, _extra: usize) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

pub fn scale_rows_device(_x: &Tensor, _weights: &Tensor) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}

pub fn cast_device(_t: &Tensor, _dtype: DType) -> Result<Tensor> {
    Err(MoeError::NotCompiledWithCuda)
}
