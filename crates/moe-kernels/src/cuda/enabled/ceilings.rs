//! Measured ceilings of a device: device-to-device copy bandwidth and bf16 matrix-product rate.
