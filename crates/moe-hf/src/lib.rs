//! Hugging Face MoE families for the MoE layer runtime.
//!
//! - [`Checkpoint`]: memory-mapped safetensors (single file or sharded index), typed errors.
//! - [`HfConfig`]: a family's `config.json` -> layer placement, sizes, routing, quantization,
//!   and the [`moe_core::MoeConfig`] of one layer.
//! - [`ExpertSource`]: the layer's canonical expert names served from the family's real names
//!   (per-expert tensors borrowed, fused tensors transposed one expert at a time).
//! - [`MoeBlock`]: router gate + routed layer + shared experts of one layer, as transformers
//!   computes the block.
//! - [`CheckpointQuant`]: quantized expert formats (DeepSeek FP8 block, ModelOpt FP8/NVFP4,
//!   MXFP4 incl. GPT-OSS `_blocks`/`_scales`, AutoAWQ INT4, INT8) and the canonical tensors
//!   each serves; [`dequant`] decodes them for model-side weights.
//! - [`check_layer_finite`]: NaN/infinity in a layer's block weights, refused naming the
//!   tensor and element.
//! - [`quantize_checkpoint`]: writes a float checkpoint's experts as FP8 block, NVFP4 or MXFP4
//!   in the formats' real layouts (`moe quantize`).
//!
//! Supported `model_type`s: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, gpt_oss,
//! llama4_text and llama4 (see `docs/CHECKPOINTS.md`).

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod dequant;
pub mod expert_source;
pub mod finite;
pub mod names;
pub mod numerics;
pub mod quant_format;
pub mod quantize;
pub mod router;
pub mod shared_expert;

pub use block::{BlockOptions, Distributed, MoeBlock};
pub use checkpoint::Checkpoint;
pub use config::{Family, HfConfig, LayerPlacement};
pub use expert_source::ExpertSource;
pub use finite::{FiniteReport, check_finite, check_layer_finite};
pub use names::{BlockNames, ExpertLayout};
pub use quant_format::CheckpointQuant;
pub use quantize::{QuantizeOptions, QuantizeProgress, QuantizeSummary, TargetFormat, quantize_checkpoint};
