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
//! `.bias` tensors `[I]`, `[I]`, `[H]`. Non-gated layers read only `w1` (up) and `w2`.
//! TP (§6.3): w1/w3 and their biases are COLUMN-sharded (rows of `[I, H]`), w2 is ROW-sharded
//! (columns of `[H, I]`). The w2 bias is not sharded: it is loaded on TP rank 0 and zero on
//! the other ranks, so the sum of the ranks' partial outputs adds it exactly once.
//!
//! A slot is staged in f32 scratch and committed only when all its tensors are present and
//! well-shaped, so a failed load never leaves a half-written slot.

use moe_core::weights::{expert_tensor_name, Proj};
use moe_core::{
    DType, EplbSupportStatus, ExpertTensorRegistration, ExpertWeights, LayerLayout, MoeError, QuantAlgo,
    QuantMethod, QuantizedInput, Result, Tensor, TensorView, WeightSource,
};

use crate::names::{W2_BIAS, W2_WEIGHT, W3_W1_BIAS, W3_W1_WEIGHT};
use crate::shard::{copy_col_shard, copy_row_shard, Shard};
use crate::slot_io::write_slot;

/// The quant method of unquantized experts (`QuantAlgo::None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnquantizedMethod;

/// One slot's tensors in f32, before they are committed.
#[derive(Debug, Default)]
struct SlotStaging {
    fc1: Vec<f32>,
    w2: Vec<f32>,
    fc1_bias: Vec<f32>,
    w2_bias: Vec<f32>,
}

/// Checkpoint tensors of one expert, in the order they are looked up.
struct ExpertSources<'a> {
    /// `w3` (up) of gated layers.
    up: Option<TensorView<'a>>,
    /// `w1`: the gate of gated layers, the up projection of non-gated ones.
    w1: Option<TensorView<'a>>,
    w2: Option<TensorView<'a>>,
    up_bias: Option<TensorView<'a>>,
    w1_bias: Option<TensorView<'a>>,
    w2_bias: Option<TensorView<'a>>,
}

fn check_layout(layout: &LayerLayout) -> Result<()> {
    if !layout.dtype.is_float_activation() {
        return Err(MoeError::DTypeMismatch {
            what: "layer dtype of unquantized experts".into(),
            expected: "f32, f16 or bf16".into(),
            actual: layout.dtype.to_string(),
        });
    }
    if layout.tp_size == 0 || layout.tp_rank >= layout.tp_size {
        return Err(MoeError::config(
            "parallel.tp_rank",
            format!("tp_rank {} out of range for tp_size {}", layout.tp_rank, layout.tp_size),
        ));
    }
    let width = Shard::of(layout.intermediate_size, layout.tp_size, layout.tp_rank).width;
    if layout.intermediate_per_partition != width {
        return Err(MoeError::config(
            "intermediate_per_partition",
            format!(
                "{} channels per rank, but intermediate_size {} over tp_size {} shards into {width}",
                layout.intermediate_per_partition, layout.intermediate_size, layout.tp_size
            ),
        ));
    }
    if let Some((slot, &e)) = layout.local_expert_ids.iter().enumerate().find(|(_, e)| **e >= layout.num_experts) {
        return Err(MoeError::config(
            "local_expert_ids",
            format!("local slot {slot} names expert {e}, but there are {} experts", layout.num_experts),
        ));
    }
    Ok(())
}

/// Checks that `weights` holds the tensors `create_weights` made for `layout`.
fn check_created(weights: &ExpertWeights, layout: &LayerLayout, regs: &[ExpertTensorRegistration]) -> Result<()> {
    let s = layout.num_local_slots();
    for reg in regs {
        let t = weights.get(&reg.name)?;
        let mut want = vec![s];
        want.extend_from_slice(&reg.per_slot_shape);
        if t.shape() != want.as_slice() || t.dtype() != reg.dtype {
            return Err(MoeError::lifecycle(format!(
                "expert tensor `{}` is {} {:?}, but the layout needs {} {want:?}; run create_weights for this layout",
                reg.name,
                t.dtype(),
                t.shape(),
                reg.dtype
            )));
        }
    }
    if weights.loaded.len() != s {
        return Err(MoeError::lifecycle(format!(
            "expert weights track {} slots, but the layout has {s}; run create_weights for this layout",
            weights.loaded.len()
        )));
    }
    Ok(())
}

impl UnquantizedMethod {
    /// Looks up expert `e`'s checkpoint tensors and validates the shapes of those present.
    fn sources<'a>(src: &'a dyn WeightSource, layout: &LayerLayout, e: usize) -> Result<(ExpertSources<'a>, Vec<String>)> {
        let (h, i) = (layout.hidden_size, layout.intermediate_size);
        let gated = layout.activation.is_gated();
        let mut missing = Vec::new();
        let mut fetch = |proj: Proj, suffix: &str, shape: &[usize], wanted: bool| -> Result<Option<TensorView<'a>>> {
            if !wanted {
                return Ok(None);
            }
            let name = expert_tensor_name(e, proj, suffix);
            match src.get(&name)? {
                Some(v) => {
                    v.expect_shape(&name, shape)?;
                    Ok(Some(v))
                }
                None => {
                    missing.push(name);
                    Ok(None)
                }
            }
        };
        let b = layout.bias;
        let sources = ExpertSources {
            up: fetch(Proj::W3, "weight", &[i, h], gated)?,
            w1: fetch(Proj::W1, "weight", &[i, h], true)?,
            w2: fetch(Proj::W2, "weight", &[h, i], true)?,
            up_bias: fetch(Proj::W3, "bias", &[i], gated && b)?,
            w1_bias: fetch(Proj::W1, "bias", &[i], b)?,
            w2_bias: fetch(Proj::W2, "bias", &[h], b)?,
        };
        Ok((sources, missing))
    }

    /// Decodes and shards expert `e`'s tensors into `st` (all present and validated).
    fn stage(layout: &LayerLayout, e: usize, s: &ExpertSources<'_>, st: &mut SlotStaging) -> Result<()> {
        let (h, i, ipp) = (layout.hidden_size, layout.intermediate_size, layout.intermediate_per_partition);
        let shard = Shard::of(i, layout.tp_size, layout.tp_rank);
        let decode = |v: &Option<TensorView<'_>>, proj: Proj, suffix: &str| -> Result<Vec<f32>> {
            let name = expert_tensor_name(e, proj, suffix);
            v.as_ref().ok_or_else(|| MoeError::MissingTensor { name: name.clone() })?.to_f32_vec(&name)
        };
        // FC1 rows: gated = [w3 shard ; w1 shard], non-gated = [w1 shard].
        st.fc1.resize(layout.fc1_rows() * h, 0.0);
        let (first, second) = st.fc1.split_at_mut(ipp * h);
        if layout.activation.is_gated() {
            copy_row_shard(&decode(&s.up, Proj::W3, "weight")?, h, shard, first);
            copy_row_shard(&decode(&s.w1, Proj::W1, "weight")?, h, shard, second);
        } else {
            copy_row_shard(&decode(&s.w1, Proj::W1, "weight")?, h, shard, first);
        }
        st.w2.resize(h * ipp, 0.0);
        copy_col_shard(&decode(&s.w2, Proj::W2, "weight")?, h, i, shard, &mut st.w2);
        if layout.bias {
            st.fc1_bias.resize(layout.fc1_rows(), 0.0);
            let (first, second) = st.fc1_bias.split_at_mut(ipp);
            if layout.activation.is_gated() {
                copy_row_shard(&decode(&s.up_bias, Proj::W3, "bias")?, 1, shard, first);
                copy_row_shard(&decode(&s.w1_bias, Proj::W1, "bias")?, 1, shard, second);
            } else {
                copy_row_shard(&decode(&s.w1_bias, Proj::W1, "bias")?, 1, shard, first);
            }
            let b2 = decode(&s.w2_bias, Proj::W2, "bias")?;
            st.w2_bias.clear();
            if layout.tp_rank == 0 {
                st.w2_bias.extend_from_slice(&b2);
            } else {
                st.w2_bias.resize(h, 0.0);
            }
        }
        Ok(())
    }

    /// Writes a staged slot into the layer tensors.
    fn commit(weights: &mut ExpertWeights, layout: &LayerLayout, slot: usize, st: &SlotStaging) -> Result<()> {
        write_slot(weights.get_mut(W3_W1_WEIGHT)?, W3_W1_WEIGHT, slot, &st.fc1)?;
        write_slot(weights.get_mut(W2_WEIGHT)?, W2_WEIGHT, slot, &st.w2)?;
        if layout.bias {
            write_slot(weights.get_mut(W3_W1_BIAS)?, W3_W1_BIAS, slot, &st.fc1_bias)?;
            write_slot(weights.get_mut(W2_BIAS)?, W2_BIAS, slot, &st.w2_bias)?;
        }
        Ok(())
    }
}

impl QuantMethod for UnquantizedMethod {
    fn name(&self) -> &'static str {
        "unquantized"
    }

    fn algo(&self) -> QuantAlgo {
        QuantAlgo::None
    }

    fn create_weights(&self, layout: &LayerLayout) -> Result<ExpertWeights> {
        check_layout(layout)?;
        let s = layout.num_local_slots();
        // Built from the registrations, so every created tensor is registered for EPLB.
        let tensors = self
            .expert_tensors(layout)
            .into_iter()
            .map(|reg| {
                let mut shape = vec![s];
                shape.extend_from_slice(&reg.per_slot_shape);
                (reg.name, Tensor::zeros(reg.dtype, shape))
            })
            .collect();
        Ok(ExpertWeights { tensors, loaded: vec![false; s], transformed: false })
    }

    fn load_weights(
        &self,
        weights: &mut ExpertWeights,
        layout: &LayerLayout,
        src: &dyn WeightSource,
        allow_partial: bool,
    ) -> Result<()> {
        check_layout(layout)?;
        check_created(weights, layout, &self.expert_tensors(layout))?;
        let mut staging = SlotStaging::default();
        for (slot, &e) in layout.local_expert_ids.iter().enumerate() {
            let (sources, missing) = Self::sources(src, layout, e)?;
            if let Some(name) = missing.into_iter().next() {
                if allow_partial {
                    tracing::debug!(slot, expert = e, missing = %name, "partial load: slot left for a later source");
                    continue;
                }
                return Err(MoeError::MissingTensor { name });
            }
            Self::stage(layout, e, &sources, &mut staging)?;
            Self::commit(weights, layout, slot, &staging)?;
            weights.loaded[slot] = true;
        }
        // New bytes invalidate any kernel-layout transform (spec §6.5).
        weights.transformed = false;
        Ok(())
    }

    fn process_weights_after_loading(&self, weights: &mut ExpertWeights, layout: &LayerLayout) -> Result<()> {
        check_created(weights, layout, &self.expert_tensors(layout))?;
        if let Some(slot) = weights.loaded.iter().position(|&l| !l) {
            let expert = layout.local_expert_ids.get(slot).copied().unwrap_or(usize::MAX);
            return Err(MoeError::lifecycle(format!(
                "local slot {slot} (expert {expert}) has no weights: its tensors were in no source given to load_weights"
            )));
        }
        Ok(())
    }

    fn transform_weights(&self, weights: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        // The CPU kernels read the canonical layout directly: nothing to shuffle.
        weights.transformed = true;
        Ok(())
    }

    fn setup_quant_scales(&self, _weights: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        Ok(())
    }

    fn quantize_input(&self, x: &Tensor, _weights: &ExpertWeights) -> Result<QuantizedInput> {
        Ok(QuantizedInput { x: x.clone(), x_sf: None })
    }

    fn eplb_support_status(&self) -> EplbSupportStatus {
        EplbSupportStatus::Supported
    }

    fn need_load_shared_weights(&self) -> bool {
        false
    }

    fn expert_tensors(&self, layout: &LayerLayout) -> Vec<ExpertTensorRegistration> {
        let (h, ipp, fc1) = (layout.hidden_size, layout.intermediate_per_partition, layout.fc1_rows());
        let reg = |name: &str, per_slot_shape: Vec<usize>, dtype: DType| ExpertTensorRegistration {
            name: name.into(),
            dtype,
            per_slot_shape,
        };
        let mut regs = vec![reg(W3_W1_WEIGHT, vec![fc1, h], layout.dtype), reg(W2_WEIGHT, vec![h, ipp], layout.dtype)];
        if layout.bias {
            regs.push(reg(W3_W1_BIAS, vec![fc1], layout.dtype));
            regs.push(reg(W2_BIAS, vec![h], layout.dtype));
        }
        regs
    }
}

#[cfg(test)]
#[path = "unquantized_tests.rs"]
mod tests;
