//! Unquantized experts (f32 / f16 / bf16 weights in the layer dtype).
//!
//! Per-slot tensors (core spec §6.2), `S` local slots, `I_pp` intermediate channels per TP
//! rank, `expand` = 2 for gated activations and 1 for `Relu2`:
//!
//! | name | shape |
//! |---|---|
//! | `w3_w1_weight` | `[S, expand * I_pp, H]`, rows `[w3 (up) ; w1 (gate)]` |
//! | `w2_weight` | `[S, H, I_pp]` |
//! | `w3_w1_bias` (with bias) | `[S, expand * I_pp]` |
//! | `w2_bias` (with bias) | `[S, H]` |
//!
//! Loading reads the canonical names of expert `e = local_expert_ids[slot]`: `{e}.w1.weight`
//! (gate, `[I, H]`), `{e}.w3.weight` (up, `[I, H]`), `{e}.w2.weight` (down, `[H, I]`) and the
//! `.bias` tensors `[I]`, `[I]`, `[H]`, in any float dtype (converted to the layer dtype with
//! round-to-nearest-even). Non-gated layers read only `w1` (up) and `w2`.
//! TP (§6.3): w1/w3 and their biases are COLUMN-sharded (rows of `[I, H]`), w2 is ROW-sharded
//! (columns of `[H, I]`). The w2 bias is not sharded: it is loaded on TP rank 0 and zero on
//! the other ranks, so the sum of the ranks' partial outputs adds it exactly once.
//!
//! The lifecycle (staged slot writes: a failed load never leaves a half-written slot) is the
//! shared engine's (module `engine`); this file only declares the format.

use moe_core::{ExpertWeights, LayerLayout, QuantAlgo, Result};
use moe_kernels::cpu::float_slice::FloatSlice;
use moe_kernels::cpu::weight_slice::WeightSlice;

use crate::engine::impl_quant_method;
use crate::format::{FLOATS, Fc, Format, Geometry, SlotDType, TensorSpec};

/// The quant method of unquantized experts (`QuantAlgo::None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnquantizedMethod;

impl Format for UnquantizedMethod {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::None
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let weight = Geometry::exact(1, 1);
        vec![TensorSpec::slotted(
            "weight",
            FLOATS,
            weight,
            "weight",
            SlotDType::Layer,
        )]
    }

    fn bias_dtype(&self) -> SlotDType {
        SlotDType::Layer
    }

    fn matrix<'a>(
        &self,
        weights: &'a ExpertWeights,
        layout: &LayerLayout,
        fc: Fc,
        slot: usize,
    ) -> Result<WeightSlice<'a>> {
        let name = fc.tensor("weight");
        let (rows, cols) = fc.dims(layout);
        Ok(FloatSlice::from_tensor(weights.get(&name)?, &name)?
            .chunk(&name, slot, rows * cols)?
            .into())
    }
}

impl_quant_method!(UnquantizedMethod);

#[cfg(test)]
#[path = "unquantized_tests.rs"]
mod tests;
