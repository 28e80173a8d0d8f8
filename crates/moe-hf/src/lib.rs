//! moe-hf
