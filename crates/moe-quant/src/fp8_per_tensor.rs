//! FP8 per-tensor experts (`QuantAlgo::Fp8PerTensor`; TensorRT-LLM's `FP8QDQFusedMoEMethod`,
//! spec A.3.2; ModelOpt checkpoints): E4M3 weights with one scale per projection, static
//! per-tensor FP8 activations.
//!
//! Checkpoint, per expert `e` and `X` in `w1`/`w3`/`w2` (unsharded `[out, in]`):
//! `{e}.X.weight` F8E4M3 `[out, in]`; `{e}.X.weight_scale` `[]`/`[1]`; `{e}.X.input_scale`
//! `[]`/`[1]` (dequant convention: `x ≈ q · input_scale`). Scales may be f32, bf16 or f16.
//!
//! | per-slot tensor | shape | |
//! |---|---|---|
//! | `w3_w1_weight` | `[S, expand·I_pp, H]` F8E4M3 | requantized to the common FC1 scale |
//! | `w2_weight` | `[S, H, I_pp]` F8E4M3 | |
//! | `w3_w1_weight_scale`, `w2_weight_scale` | `[S]` f32 | `W = e4m3(q) · scale` |
//! | `fc31_dequant`, `fc2_dequant` | `[S]` f32 | TensorRT-LLM's GEMM output factors |
//!
//! Layer tensors: `fc31_input_dequant`, `fc2_input_dequant` `[1]` and the all-expert tables.
//!
//! Folding:
//! - per expert, at load: FC1's halves get the common scale `s31 = max(sW_w1, sW_w3)`, the other
//!   half requantized `q' = e4m3_sat(e4m3(q) · s_own / s31)`;
//! - `process_weights_after_loading`: `in31` = max of the w1 and w3 input scales over ALL experts,
//!   `in2` = max of the w2 ones;
//! - `setup_quant_scales`: `fc31_dequant = s31 · in31`, `fc2_dequant = sW_w2 · in2`. The host
//!   kernels apply the two factors separately (weight scale, activation QDQ) — the same product.
//!
//! Activations: `quantize_input` is the static QDQ `e4m3_sat(x / in31) · in31`; `run_moe`
//! re-applies it (idempotent on quantized values, and it undoes the 16-bit rounding of the
//! dispatched payload) and quantizes the activation output with `in2`.
//! EPLB: `NotSupported` (spec A.4).

use moe_core::weights::Proj;
use moe_core::{
    DType, ExpertTensorRegistration, ExpertWeights, LayerLayout, QuantAlgo, QuantizedInput, Result, Tensor,
};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::weight_slice::{QuantMatrix, QuantSlice, WeightSlice};
use moe_kernels::ops::qdq_activations;

use crate::engine::{
    derive_per_slot, impl_quant_method, layer_scalar, set_layer_scalar, slot_bytes_of, slot_scalar, table_max,
    unify_fc1_halves,
};
use crate::format::{Fc, Fc31InputScale, Format, Geometry, LayerTensor, Scalars, SlotDType, Staging, TensorSpec};
use crate::layout::per_slot_scalars;
use crate::names::{
    FC2_DEQUANT, FC2_EXPERT_INPUT_SCALES, FC2_INPUT_DEQUANT, FC31_DEQUANT, FC31_EXPERT_INPUT_SCALES,
    FC31_INPUT_DEQUANT, W2_WEIGHT_SCALE, W3_W1_WEIGHT, W3_W1_WEIGHT_SCALE,
};

/// The quant method of FP8 per-tensor experts. See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fp8PerTensorMethod;

impl Format for Fp8PerTensorMethod {
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::Fp8PerTensor
    }

    fn specs(&self) -> Vec<TensorSpec> {
        let codes = Geometry::exact(1, 1);
        vec![
            TensorSpec::slotted(
                "weight",
                &[DType::F8E4M3],
                codes,
                "weight",
                SlotDType::Is(DType::F8E4M3),
            ),
            TensorSpec::scalar("weight_scale"),
        ]
    }

    fn derived_slot_tensors(&self, _layout: &LayerLayout) -> Vec<ExpertTensorRegistration> {
        per_slot_scalars(&[W3_W1_WEIGHT_SCALE, W2_WEIGHT_SCALE, FC31_DEQUANT, FC2_DEQUANT])
    }

    fn layer_tensors(&self, _layout: &LayerLayout) -> Vec<LayerTensor> {
        LayerTensor::scalars(&[FC31_INPUT_DEQUANT, FC2_INPUT_DEQUANT])
    }

    fn input_scales(&self) -> Option<Fc31InputScale> {
        Some(Fc31InputScale::Max)
    }

    fn finish_slot(&self, layout: &LayerLayout, e: usize, sc: &Scalars, st: &mut Staging) -> Result<()> {
        let s31 = if layout.activation.is_gated() {
            unify_fc1_halves(
                st,
                W3_W1_WEIGHT,
                sc.get(e, Proj::W3, "weight_scale")?,
                sc.get(e, Proj::W1, "weight_scale")?,
            )?
        } else {
            sc.get(e, Proj::W1, "weight_scale")?
        };
        st.f32_mut(W3_W1_WEIGHT_SCALE)?.fill(s31);
        st.f32_mut(W2_WEIGHT_SCALE)?.fill(sc.get(e, Proj::W2, "weight_scale")?);
        Ok(())
    }

    fn fold_layer_scales(&self, w: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        let (in31, in2) = (
            table_max(w, FC31_EXPERT_INPUT_SCALES)?,
            table_max(w, FC2_EXPERT_INPUT_SCALES)?,
        );
        set_layer_scalar(w, FC31_INPUT_DEQUANT, in31)?;
        set_layer_scalar(w, FC2_INPUT_DEQUANT, in2)
    }

    fn setup_quant_scales(&self, w: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        let (in31, in2) = (
            layer_scalar(w, FC31_INPUT_DEQUANT)?,
            layer_scalar(w, FC2_INPUT_DEQUANT)?,
        );
        derive_per_slot(w, FC31_DEQUANT, W3_W1_WEIGHT_SCALE, |s| s * in31)?;
        derive_per_slot(w, FC2_DEQUANT, W2_WEIGHT_SCALE, |s| s * in2)
    }

    fn quantize_input<'a>(&self, x: &'a Tensor, w: &ExpertWeights) -> Result<QuantizedInput<'a>> {
        let q = self.act_quant(w, Fc::Fc1)?;
        Ok(QuantizedInput::owned(qdq_activations(&q, x)?, None))
    }

    fn matrix<'a>(&self, w: &'a ExpertWeights, layout: &LayerLayout, fc: Fc, slot: usize) -> Result<WeightSlice<'a>> {
        let (rows, cols) = fc.dims(layout);
        let name = fc.tensor("weight");
        let codes = slot_bytes_of(w, &name, slot)?;
        let scale = slot_scalar(w, &fc.tensor("weight_scale"), slot)?;
        Ok(QuantSlice::new(&name, rows, cols, QuantMatrix::Fp8PerTensor { codes, scale })?.into())
    }

    fn act_quant(&self, w: &ExpertWeights, fc: Fc) -> Result<ActQuant> {
        let name = match fc {
            Fc::Fc1 => FC31_INPUT_DEQUANT,
            Fc::Fc2 => FC2_INPUT_DEQUANT,
        };
        Ok(ActQuant::Fp8PerTensor {
            scale: layer_scalar(w, name)?,
        })
    }
}

impl_quant_method!(Fp8PerTensorMethod);

#[cfg(test)]
#[path = "fp8_per_tensor_tests.rs"]
mod tests;
