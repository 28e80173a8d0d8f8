//! FP8 block-scaled experts (`QuantAlgo::Fp8Block`; TensorRT-LLM's
//! `DeepSeekFP8BlockScalesFusedMoEMethod`, spec A.3.3; DeepSeek-V3/R1 checkpoints): E4M3
//! weights with one f32 scale per `b0 x b1` block (`QuantConfig::weight_block_size`, default
//! 128 x 128) and dynamic 1 x `b1` FP8 activation groups.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`):
//! `{e}.X.weight` F8E4M3 `[out, in]`; `{e}.X.weight_scale_inv` `[ceil(out / b0), ceil(in / b1)]`
//! (f32, bf16 or f16), which is a MULTIPLIER despite its name: `W[n, k] = q[n, k] · S[n / b0, k / b1]`.
//!
//! | per-slot tensor | shape | |
//! |---|---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H]` F8E4M3 | |
//! | `w3_w1_weight_scale` | `[S, expand·I_pp / b0, ceil(H / b1)]` f32 | w3 block rows first (TensorRT-LLM's `w3_w1_weight_scaling_factor`) |
//! | `w2_weight` | `[S, H, I_pp]` F8E4M3 | |
//! | `w2_weight_scale` | `[S, ceil(H / b0), ceil(I_pp / b1)]` f32 | (`w2_weight_scaling_factor`) |
//!
//! Block scales shard with their weights in whole blocks: a TP shard (or, gated, each FC1 half)
//! that would split a block is refused naming the tensor (TensorRT-LLM requires `I % 128 == 0`).
//! No scale folding. Activations are not quantized before dispatch (`quantize_input` is the
//! identity); `run_moe` quantizes both GEMM inputs per row in groups of `b1` columns
//! (`s = amax / 448`, `fp8_quantize_1x128`). EPLB: `NotVerified` (spec A.4).

use moe_core::{DType, ExpertWeights, LayerLayout, MoeError, QuantAlgo, Result};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::weight_slice::{QuantMatrix, QuantSlice, WeightSlice};

use crate::engine::{impl_quant_method, slot_bytes_of, slot_f32_of};
use crate::format::{FLOATS, Fc, Format, Geometry, SlotDType, TensorSpec};

/// The quant method of FP8 block-scaled experts. See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct Fp8BlockMethod {
    block: [usize; 2],
}

impl Fp8BlockMethod {
    /// DeepSeek's `[128, 128]`, used when the config names no block size.
    pub const DEFAULT_BLOCK: [usize; 2] = [128, 128];

    /// A method for `[rows, cols]` weight blocks; refuses an empty block.
    pub fn new(block: [usize; 2]) -> Result<Self> {
        if block.contains(&0) {
            return Err(MoeError::config(
                "quant.weight_block_size",
                format!("must be positive, got {block:?}"),
            ));
        }
        Ok(Fp8BlockMethod { block })
    }

    pub fn block(&self) -> [usize; 2] {
        self.block
    }
}

impl Format for Fp8BlockMethod {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::Fp8Block
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let [b0, b1] = self.block;
        let codes = Geometry::exact(1, 1);
        let blocks = Geometry::Matrix {
            rows: b0,
            cols: b1,
            exact: false,
        };
        vec![
            TensorSpec::slotted(
                "weight",
                &[DType::F8E4M3],
                codes,
                "weight",
                SlotDType::Is(DType::F8E4M3),
            ),
            TensorSpec::slotted(
                "weight_scale_inv",
                FLOATS,
                blocks,
                "weight_scale",
                SlotDType::Is(DType::F32),
            ),
        ]
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let codes = slot_bytes_of(w, &name, slot)?;
        let scales = slot_f32_of(w, &fc.tensor("weight_scale"), slot)?;
        Ok(QuantSlice::new(
            &name,
            rows,
            cols,
            QuantMatrix::Fp8Block {
                codes,
                scales,
                block: self.block,
            },
        )?
        .into())
    }

    fn act_quant(&self, _w: &ExpertWeights, _fc: Fc) -> Result<ActQuant> {
        // Activation groups run along K, the weight block's column extent.
        Ok(ActQuant::Fp8Group { group: self.block[1] })
    }
}

impl_quant_method!(Fp8BlockMethod);

#[cfg(test)]
#[path = "fp8_block_tests.rs"]
mod tests;
