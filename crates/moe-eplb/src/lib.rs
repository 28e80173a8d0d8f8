//! moe-eplb
