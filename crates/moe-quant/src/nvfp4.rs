//! NVFP4 experts (`QuantAlgo::Nvfp4`; TensorRT-LLM's `NVFP4FusedMoEMethod`, spec A.3.7; ModelOpt
//! checkpoints): E2M1 weights with an E4M3 scale per 16 inputs and a per-tensor f32 scale,
//! dynamic NVFP4 activations with a static global scale.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`):
//! `{e}.X.weight` U8 (or fp4x2) `[out, in / 2]`, low nibble = even input; `{e}.X.weight_scale`
//! F8E4M3 `[out, in / 16]`; `{e}.X.weight_scale_2` `[]`/`[1]`; `{e}.X.input_scale` `[]`/`[1]`
//! (ModelOpt: `input_scale = amax_x / (448·6)`, a dequant scale). `W = e2m1 · e4m3(sf) · s2`.
//!
//! | per-slot tensor | shape | |
//! |---|---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H / 2]` u8 | |
//! | `w3_w1_weight_scale` | `[S, expand·I_pp, H / 16]` F8E4M3 | |
//! | `w2_weight` | `[S, H, I_pp / 2]` u8 | |
//! | `w2_weight_scale` | `[S, H, I_pp / 16]` F8E4M3 | |
//! | `w3_w1_weight_scale_2`, `w2_weight_scale_2` | `[S]` f32 | `s2` (FC1: the larger of w1/w3) |
//! | `fc31_alpha`, `fc2_alpha` | `[S]` f32 | `s2 / input_scale_global` (TensorRT-LLM's GEMM factor) |
//!
//! Layer tensors: `fc31_input_scale`, `fc2_input_scale` `[1]` and the all-expert tables.
//!
//! Folding:
//! - at load, every expert's w1 and w3 input scales must agree (allclose), else the checkpoint
//!   is refused naming `{e}.w3.input_scale`;
//! - per expert: `s2_31 = max(s2_w1, s2_w3)`. If they differ (not allclose), TensorRT-LLM keeps
//!   the block scales as they are, silently scaling one half by `s2_31 / s2_own`; here the block
//!   scales of the smaller half are rescaled, `sf' = e4m3_sat(e4m3(sf) · s2_own / s2_31)`, with a
//!   warning — a deliberate deviation (accuracy over bit-parity on such checkpoints;
//!   ModelOpt exports share `s2` between gate and up, where both agree);
//! - `process_weights_after_loading`: `fc31_input_scale = 1 / max(all w1 input scales)`,
//!   `fc2_input_scale = 1 / max(all w2 input scales)` (global quantization scales, `448·6/amax`);
//! - `setup_quant_scales`: `fc31_alpha = s2_31 / fc31_input_scale`, `fc2_alpha` likewise.
//!
//! Activations: `quantize_input` = NVFP4 QDQ with `fc31_input_scale` (before dispatch, as
//! TensorRT-LLM); `run_moe` re-applies it (idempotent up to a re-rounded block scale in
//! degenerate blocks) and quantizes the activation output with `fc2_input_scale`.
//! EPLB: `Supported`.

use moe_core::weights::Proj;
use moe_core::{
    DType, ExpertTensorRegistration, ExpertWeights, LayerLayout, QuantAlgo, QuantizedInput, Result, Tensor,
};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::weight_slice::{NVFP4_BLOCK, QuantMatrix, QuantSlice, WeightSlice};
use moe_kernels::ops::qdq_activations;

use crate::engine::{
    allclose, derive_per_slot, impl_quant_method, layer_scalar, set_layer_scalar, slot_bytes_of, slot_scalar,
    table_max, unify_fc1_halves,
};
use crate::format::{
    Fc, Fc31InputScale, Format, Geometry, LayerTensor, PACKED_FP4, Scalars, SlotDType, Staging, TensorSpec,
};
use crate::layout::per_slot_scalars;
use crate::names::{
    FC2_ALPHA, FC2_EXPERT_INPUT_SCALES, FC2_INPUT_SCALE, FC31_ALPHA, FC31_EXPERT_INPUT_SCALES, FC31_INPUT_SCALE,
    W2_WEIGHT_SCALE_2, W3_W1_WEIGHT_SCALE, W3_W1_WEIGHT_SCALE_2,
};

/// The quant method of NVFP4 experts. See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nvfp4Method;

impl Format for Nvfp4Method {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::Nvfp4
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let packed = Geometry::exact(1, 2);
        let blocks = Geometry::exact(1, NVFP4_BLOCK);
        vec![
            TensorSpec::slotted("weight", PACKED_FP4, packed, "weight", SlotDType::Is(DType::U8)),
            TensorSpec::slotted(
                "weight_scale",
                &[DType::F8E4M3],
                blocks,
                "weight_scale",
                SlotDType::Is(DType::F8E4M3),
            ),
            TensorSpec::scalar("weight_scale_2"),
        ]
    }

    fn derived_slot_tensors(&self, _layout: &LayerLayout) -> Vec<ExpertTensorRegistration> {
        per_slot_scalars(&[W3_W1_WEIGHT_SCALE_2, W2_WEIGHT_SCALE_2, FC31_ALPHA, FC2_ALPHA])
    }

    fn layer_tensors(&self, _layout: &LayerLayout) -> Vec<LayerTensor> {
        LayerTensor::scalars(&[FC31_INPUT_SCALE, FC2_INPUT_SCALE])
    }

    fn input_scales(&self) -> Option<Fc31InputScale> {
        Some(Fc31InputScale::Agree)
    }

    fn finish_slot(&self, layout: &LayerLayout, e: usize, sc: &Scalars, st: &mut Staging) -> Result<()> {
        let s2_31 = if layout.activation.is_gated() {
            let (s3, s1) = (
                sc.get(e, Proj::W3, "weight_scale_2")?,
                sc.get(e, Proj::W1, "weight_scale_2")?,
            );
            if allclose(s3, s1) {
                s3.max(s1)
            } else {
                tracing::warn!(
                    expert = e,
                    w1 = s1,
                    w3 = s3,
                    "NVFP4 weight_scale_2 of w1 and w3 differ: the block scales of the smaller half are rescaled to the larger"
                );
                unify_fc1_halves(st, W3_W1_WEIGHT_SCALE, s3, s1)?
            }
        } else {
            sc.get(e, Proj::W1, "weight_scale_2")?
        };
        st.f32_mut(W3_W1_WEIGHT_SCALE_2)?.fill(s2_31);
        st.f32_mut(W2_WEIGHT_SCALE_2)?
            .fill(sc.get(e, Proj::W2, "weight_scale_2")?);
        Ok(())
    }

    fn fold_layer_scales(&self, w: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        let (m31, m2) = (
            table_max(w, FC31_EXPERT_INPUT_SCALES)?,
            table_max(w, FC2_EXPERT_INPUT_SCALES)?,
        );
        set_layer_scalar(w, FC31_INPUT_SCALE, 1.0 / m31)?;
        set_layer_scalar(w, FC2_INPUT_SCALE, 1.0 / m2)
    }

    fn setup_quant_scales(&self, w: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        let (g31, g2) = (layer_scalar(w, FC31_INPUT_SCALE)?, layer_scalar(w, FC2_INPUT_SCALE)?);
        derive_per_slot(w, FC31_ALPHA, W3_W1_WEIGHT_SCALE_2, |s2| s2 / g31)?;
        derive_per_slot(w, FC2_ALPHA, W2_WEIGHT_SCALE_2, |s2| s2 / g2)
    }

    fn quantize_input<'a>(&self, x: &'a Tensor, w: &ExpertWeights) -> Result<QuantizedInput<'a>> {
        let q = self.act_quant(w, Fc::Fc1)?;
        Ok(QuantizedInput::owned(qdq_activations(&q, x)?, None))
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let m = QuantMatrix::Nvfp4 {
            packed: slot_bytes_of(w, &name, slot)?,
            block_scales: slot_bytes_of(w, &fc.tensor("weight_scale"), slot)?,
            global: slot_scalar(w, &fc.tensor("weight_scale_2"), slot)?,
        };
        Ok(QuantSlice::new(&name, rows, cols, m)?.into())
    }

    fn act_quant(&self, w: &ExpertWeights, fc: Fc) -> Result<ActQuant> {
        let name = match fc {
            Fc::Fc1 => FC31_INPUT_SCALE,
            Fc::Fc2 => FC2_INPUT_SCALE,
        };
        Ok(ActQuant::Nvfp4 {
            global_scale: layer_scalar(w, name)?,
        })
    }
}

impl_quant_method!(Nvfp4Method);

#[cfg(test)]
#[path = "nvfp4_tests.rs"]
mod tests;
