//! INT4 group-wise experts with 16/32-bit activations (`QuantAlgo::W4A16Int4`): AWQ-style
//! unsigned INT4 with per-group zero point, stored row-major `[out, in/2]`.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`, group size `g`
//! from `QuantConfig::group_size`, default 128): `{e}.X.weight` U8 `[out, in / 2]` (low nibble =
//! even input index, UNSIGNED codes 0..15); `{e}.X.weight_scale` f32/bf16/f16 `[out, in / g]`;
//! `{e}.X.weight_zero` U8 `[out, in / g]`. `W[n, k] = (q[n, k] − z[n, k / g]) · s[n, k / g]`.
//! (AWQ's own int32 packing along N and GPTQ's `zero − 1` are converted by the checkpoint
//! adapters; see `moe_kernels::codec::int`.)
//!
//! | per-slot tensor | shape |
//! |---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H / 2]` u8 |
//! | `w3_w1_weight_scale` | `[S, expand·I_pp, H / g]` f32 |
//! | `w3_w1_weight_zero` | `[S, expand·I_pp, H / g]` u8 |
//! | `w2_weight`, `w2_weight_scale`, `w2_weight_zero` | `[S, H, I_pp / 2]`, `[S, H, I_pp / g]` ×2 |
//!
//! Scales and zeros shard with their weights in whole groups (a split group is refused,
//! naming the tensor). No scale folding; activations are not quantized.
//! EPLB: `NotSupported` (as TensorRT-LLM's INT4 methods, spec A.4).

use moe_core::{DType, ExpertWeights, LayerLayout, MoeError, QuantAlgo, Result};
use moe_kernels::cpu::weight_slice::{QuantMatrix, QuantSlice, WeightSlice};

use crate::engine::{impl_quant_method, slot_bytes_of, slot_f32_of};
use crate::format::{FLOATS, Fc, Format, Geometry, SlotDType, TensorSpec};

/// The quant method of INT4 group-wise experts. See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct Int4GroupMethod {
    group: usize,
}

impl Int4GroupMethod {
    /// Group size when the config names none.
    pub const DEFAULT_GROUP: usize = 128;

    /// A method for groups of `group` inputs: positive and even (a byte of two codes never
    /// straddles two groups).
    pub fn new(group: usize) -> Result<Self> {
        if group == 0 || !group.is_multiple_of(2) {
            return Err(MoeError::config(
                "quant.group_size",
                format!("must be a positive even number, got {group}"),
            ));
        }
        Ok(Int4GroupMethod { group })
    }

    pub fn group(&self) -> usize {
        self.group
    }
}

impl Format for Int4GroupMethod {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::W4A16Int4
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let packed = Geometry::exact(1, 2);
        let groups = Geometry::exact(1, self.group);
        vec![
            TensorSpec::slotted("weight", &[DType::U8], packed, "weight", SlotDType::Is(DType::U8)),
            TensorSpec::slotted(
                "weight_scale",
                FLOATS,
                groups,
                "weight_scale",
                SlotDType::Is(DType::F32),
            ),
            TensorSpec::slotted(
                "weight_zero",
                &[DType::U8],
                groups,
                "weight_zero",
                SlotDType::Is(DType::U8),
            ),
        ]
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let m = QuantMatrix::Int4Group {
            packed: slot_bytes_of(w, &name, slot)?,
            scales: slot_f32_of(w, &fc.tensor("weight_scale"), slot)?,
            zeros: Some(slot_bytes_of(w, &fc.tensor("weight_zero"), slot)?),
            group: self.group,
        };
        Ok(QuantSlice::new(&name, rows, cols, m)?.into())
    }
}

impl_quant_method!(Int4GroupMethod);

#[cfg(test)]
#[path = "int4_group_tests.rs"]
mod tests;
