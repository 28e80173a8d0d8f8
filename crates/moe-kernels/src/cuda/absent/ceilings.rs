//! Measured ceilings of a device: device-to-device copy bandwidth and the bf16 and FP8 (e4m3) matrix-product rates. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).

use moe_core::Result;

use super::CudaDevice;

/// Device-to-device copy bandwidth in GB/s (no device exists in this build).
pub fn copy_bandwidth_gbps(dev: &CudaDevice, _bytes: usize, _iters: usize) -> Result<f64> {
    match dev.never {}
}

/// bf16 matrix-product rate in TFLOP/s (no device exists in this build).
pub fn bf16_matmul_tflops(dev: &CudaDevice, _n: usize, _iters: usize) -> Result<f64> {
    match dev.never {}
}

/// FP8 (e4m3) matrix-product rate in TFLOP/s (no device exists in this build).
pub fn fp8_matmul_tflops(dev: &CudaDevice, _n: usize, _iters: usize) -> Result<f64> {
    match dev.never {}
}
