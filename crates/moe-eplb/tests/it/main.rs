//! Integration tests of moe-eplb: DeepSeek's oracle cases, the default algorithm's balance
//! and migration trade-off, TensorRT-LLM's greedy algorithm, statistics, the dynamic
//! balancer's hook sequence and placement files.

mod cases;
mod drift;
mod dynamic;
mod files;
mod statistics;
