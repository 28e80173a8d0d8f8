//! Quantization methods of MoE experts (TensorRT-LLM's `FusedMoEMethod`s): each owns the
//! per-slot tensor layout of a format, checkpoint loading with TP sharding, post-load
//! transforms, scale folding and the registration of every per-expert tensor for EPLB.
//!
//! [`select_quant_method`] maps a layer's [`moe_core::QuantConfig`] to its method (backends
//! that run the host kernels use [`select_host_quant_method`], which adds the kernel view of a
//! slot, [`HostQuantMethod`]). One method per format, one file each:
//!
//! | `QuantAlgo` | method | weights | activations | EPLB |
//! |---|---|---|---|---|
//! | `None` | [`UnquantizedMethod`] | f32/f16/bf16 | as they are | supported |
//! | `Fp8PerTensor` | [`Fp8PerTensorMethod`] | E4M3, scale per tensor | static FP8 per tensor | not supported |
//! | `Fp8Block` | [`Fp8BlockMethod`] | E4M3, 128x128 block scales | dynamic FP8 1x128 | not verified |
//! | `Nvfp4` | [`Nvfp4Method`] | E2M1, E4M3 per 16 + global | dynamic NVFP4 | supported |
//! | `W4A16Mxfp4` | [`Mxfp4Method`] | E2M1, UE8M0 per 32 | as they are | supported |
//! | `W4A16Int4` | [`Int4GroupMethod`] | u4 with zero point per group | as they are | not supported |
//! | `W8A16` | [`Int8ChannelMethod`] | i8, scale per channel | as they are | not supported |
//!
//! A method declares its format (module `format`); the lifecycle — creation from the
//! registrations, loading with TP sharding and staged slot writes, the all-expert input
//! scales, processing, views — is written once (modules `engine`, `layout`, [`shard`],
//! [`slot_io`]). Weights stay packed in their format; the kernels decode tiles on the fly.
//! [`quantize`] produces the canonical checkpoint tensors of every format from f32 weights.

mod engine;
mod format;
pub mod fp8_block;
pub mod fp8_per_tensor;
mod host;
pub mod int4_group;
pub mod int8_channel;
mod layout;
pub mod mxfp4;
pub mod names;
pub mod nvfp4;
pub mod quantize;
mod select;
pub mod shard;
pub mod slot_io;
pub mod unquantized;

#[cfg(test)]
mod test_util;

pub use fp8_block::Fp8BlockMethod;
pub use fp8_per_tensor::Fp8PerTensorMethod;
pub use host::HostQuantMethod;
pub use int4_group::Int4GroupMethod;
pub use int8_channel::Int8ChannelMethod;
pub use mxfp4::Mxfp4Method;
pub use nvfp4::Nvfp4Method;
pub use select::{select_host_quant_method, select_quant_method};
pub use unquantized::UnquantizedMethod;
