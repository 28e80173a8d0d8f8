//! moe-scheduler
