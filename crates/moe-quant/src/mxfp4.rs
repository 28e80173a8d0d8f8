//! MXFP4 experts with 16/32-bit activations (`QuantAlgo::W4A16Mxfp4`; TensorRT-LLM's
//! `W4A16MXFP4*` methods, spec A.3.8; GPT-OSS checkpoints): E2M1 weights with a UE8M0
//! (power-of-two) scale per 32 inputs, no global scale, activations used as they are.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`):
//! `{e}.X.weight` U8 (or fp4x2) `[out, in / 2]`, low nibble = even input; `{e}.X.weight_scale`
//! U8 or E8M0 `[out, in / 32]`; optional `{e}.X.bias` as in the unquantized schema (GPT-OSS has
//! biases). `W = e2m1 · 2^(s − 127)`.
//!
//! | per-slot tensor | shape |
//! |---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H / 2]` u8 |
//! | `w3_w1_weight_scale` | `[S, expand·I_pp, H / 32]` E8M0 |
//! | `w2_weight` | `[S, H, I_pp / 2]` u8 |
//! | `w2_weight_scale` | `[S, H, I_pp / 32]` E8M0 |
//! | `w3_w1_bias`, `w2_bias` (with bias) | `[S, expand·I_pp]`, `[S, H]` f32 (the FC2 bias on TP rank 0 only) |
//!
//! Scales shard with their weights in whole 32-blocks. TensorRT-LLM pads I before sharding
//! (e.g. GPT-OSS I = 2880 over tp 4 = 720 = 22.5 blocks); here such a split is refused, naming
//! the tensor. No scale folding. EPLB: `Supported`.

use moe_core::{DType, ExpertWeights, LayerLayout, QuantAlgo, Result};
use moe_kernels::cpu::weight_slice::{MXFP4_BLOCK, QuantMatrix, QuantSlice, WeightSlice};

use crate::engine::{impl_quant_method, slot_bytes_of};
use crate::format::{Fc, Format, Geometry, PACKED_FP4, SlotDType, TensorSpec};

/// The quant method of MXFP4 experts. See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mxfp4Method;

impl Format for Mxfp4Method {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::W4A16Mxfp4
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let packed = Geometry::exact(1, 2);
        let blocks = Geometry::exact(1, MXFP4_BLOCK);
        vec![
            TensorSpec::slotted("weight", PACKED_FP4, packed, "weight", SlotDType::Is(DType::U8)),
            TensorSpec::slotted(
                "weight_scale",
                &[DType::U8, DType::E8M0],
                blocks,
                "weight_scale",
                SlotDType::Is(DType::E8M0),
            ),
        ]
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let m = QuantMatrix::Mxfp4 {
            packed: slot_bytes_of(w, &name, slot)?,
            scales: slot_bytes_of(w, &fc.tensor("weight_scale"), slot)?,
        };
        Ok(QuantSlice::new(&name, rows, cols, m)?.into())
    }
}

impl_quant_method!(Mxfp4Method);

#[cfg(test)]
#[path = "mxfp4_tests.rs"]
mod tests;
