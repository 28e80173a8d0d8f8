//! moe-kernels
