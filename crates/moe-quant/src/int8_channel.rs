//! INT8 weight-only experts (`QuantAlgo::W8A16`; TensorRT-LLM's
//! `INT8WoqPerChannelFusedMoEMethod`, spec A.3.4): symmetric int8 weights with one scale per
//! output channel, activations used as they are.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`):
//! `{e}.X.weight` I8 `[out, in]`; `{e}.X.weight_scale` f32/bf16/f16 `[out]`.
//! `W[n, k] = q[n, k] · s[n]`.
//!
//! | per-slot tensor | shape | |
//! |---|---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H]` i8 | kept `[out, in]` (a) |
//! | `w3_w1_weight_scale` | `[S, expand·I_pp]` f32 | w3 rows then w1 (b) |
//! | `w2_weight` | `[S, H, I_pp]` i8 | |
//! | `w2_weight_scale` | `[S, H]` f32 | per output row: not sharded by TP |
//!
//! (a) TensorRT-LLM transposes and interleaves them for its CUTLASS kernel. (b) TensorRT-LLM's
//! `fc31_weight_scale`, there in the model dtype; f32 here keeps f32 checkpoints exact.
//!
//! No scale folding. EPLB: `NotSupported` (spec A.4).

use moe_core::{DType, ExpertWeights, LayerLayout, QuantAlgo, Result};
use moe_kernels::cpu::weight_slice::{QuantMatrix, QuantSlice, WeightSlice};

use crate::engine::{impl_quant_method, slot_bytes_of, slot_f32_of};
use crate::format::{FLOATS, Fc, Format, Geometry, SlotDType, TensorSpec};

/// The quant method of INT8 weight-only experts. See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Int8ChannelMethod;

impl Format for Int8ChannelMethod {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::W8A16
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let codes = Geometry::exact(1, 1);
        vec![
            TensorSpec::slotted("weight", &[DType::I8], codes, "weight", SlotDType::Is(DType::I8)),
            TensorSpec::slotted(
                "weight_scale",
                FLOATS,
                Geometry::PerRow,
                "weight_scale",
                SlotDType::Is(DType::F32),
            ),
        ]
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let m = QuantMatrix::Int8Channel {
            codes: slot_bytes_of(w, &name, slot)?,
            scales: slot_f32_of(w, &fc.tensor("weight_scale"), slot)?,
        };
        Ok(QuantSlice::new(&name, rows, cols, m)?.into())
    }
}

impl_quant_method!(Int8ChannelMethod);

#[cfg(test)]
#[path = "int8_channel_tests.rs"]
mod tests;
