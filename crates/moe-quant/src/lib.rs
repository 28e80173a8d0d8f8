//! Quantization methods of MoE experts (TensorRT-LLM's `FusedMoEMethod`s): each owns the
//! per-slot tensor layout of a format, checkpoint loading with TP sharding, post-load
//! transforms, scale folding and the registration of every per-expert tensor for EPLB.
//!
//! [`select_quant_method`] maps a layer's [`moe_core::QuantConfig`] to its method; backends
//! call it in `create`. Today only unquantized experts ([`UnquantizedMethod`]) exist; the
//! quantized formats arrive in later issues and are refused with
//! `MoeError::Unsupported { reason: QuantUnsupported, .. }` until then.

pub mod names;
mod select;
pub mod shard;
pub mod slot_io;
pub mod unquantized;

pub use select::select_quant_method;
pub use unquantized::UnquantizedMethod;
