//! moe-comm
