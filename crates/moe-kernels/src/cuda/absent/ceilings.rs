//! Measured ceilings of a device: device-to-device copy bandwidth and bf16 matrix-product rate. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).
