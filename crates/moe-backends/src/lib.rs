//! moe-backends
