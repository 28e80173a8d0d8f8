//! Integration tests of `moe-hf` (one binary): the 14 transformers oracle fixtures on every
//! backend and chunk limit, the quantized fixtures, sharded checkpoints, and the typed errors
//! of broken inputs.

mod common;
#[cfg(feature = "cuda")]
mod cuda;
mod errors;
mod fixtures;
mod multi_rank;
mod quant;
mod quantize;
mod sharded;
