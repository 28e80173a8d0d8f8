//! moe-quant
