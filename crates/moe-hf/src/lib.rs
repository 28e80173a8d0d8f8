//! Hugging Face MoE families for the MoE layer runtime.
//!
//! - [`Checkpoint`]: memory-mapped safetensors (single file or sharded index), typed errors.
//! - [`HfConfig`]: a family's `config.json` -> layer placement, sizes, routing, quantization,
//!   and the [`moe_core::MoeConfig`] of one layer.
//! - [`ExpertSource`]: the layer's canonical expert names served from the family's real names
//!   (per-expert tensors borrowed, fused tensors transposed one expert at a time).
//! - [`MoeBlock`]: router gate + routed layer + shared experts of one layer, as transformers
//!   computes the block.
//!
//! Supported `model_type`s: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, gpt_oss,
//! llama4_text and llama4 (see `design/CHECKPOINTS.md`).

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod expert_source;
pub mod names;
pub mod numerics;
pub mod router;
pub mod shared_expert;

pub use block::{BlockOptions, MoeBlock};
pub use checkpoint::Checkpoint;
pub use config::{Family, HfConfig, LayerPlacement};
pub use expert_source::ExpertSource;
pub use names::{BlockNames, ExpertLayout};
