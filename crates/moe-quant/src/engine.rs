//! The lifecycle every quant method shares, driven by its [`Format`]: creation from the
//! registrations, checkpoint loading with TP sharding, staged slot writes, the all-expert
//! input scales, processing, and the kernel view of one slot.
//!
//! Loading one slot: look up every checkpoint tensor of the expert and check its dtype and
//! shape (present tensors are checked even when others are missing, so a malformed tensor is
//! reported rather than skipped); shard each into a zeroed f32 or byte staging buffer of its
//! per-slot tensor (FC1 halves `[w3 ; w1]`, blocked tensors in whole blocks); let the format
//! fold the expert's scalars (requantization, per-slot scales); then commit every staged
//! tensor. Nothing of a slot is written unless all of it is valid.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, ExpertWeights, HostStorage, LayerLayout, MoeError, Result, Tensor, TensorView, WeightSource};
use moe_kernels::cpu::expert_mlp::ExpertView;
use moe_kernels::cpu::float_slice::FloatSlice;

use crate::format::{
    Fc, Fc31InputScale, Format, Geometry, Scalars, SlotDType, SlotTensor, Staged, Staging, TensorSpec,
};
use crate::layout::{all_specs, check_created, check_layout, expert_tensors, layer_tensors, projections};
use crate::names::{FC2_EXPERT_INPUT_SCALES, FC31_EXPERT_INPUT_SCALES};
use crate::shard::{Shard, copy_col_shard, copy_row_shard};
use crate::slot_io::{slot_bytes, slot_f32, write_slot, write_slot_bytes};

/// Allocates every per-slot tensor (from the registrations, so every created tensor is
/// registered) and the layer tensors.
pub(crate) fn create_weights(f: &dyn Format, layout: &LayerLayout) -> Result<ExpertWeights> {
    check_layout(f, layout)?;
    let s = layout.num_local_slots();
    let mut w = ExpertWeights {
        loaded: vec![false; s],
        ..ExpertWeights::default()
    };
    for reg in expert_tensors(f, layout) {
        let mut shape = vec![s];
        shape.extend_from_slice(&reg.per_slot_shape);
        w.tensors.insert(reg.name, Tensor::zeros(reg.dtype, shape));
    }
    for lt in layer_tensors(f, layout) {
        let n = lt.shape.iter().product();
        w.tensors
            .insert(lt.name.into(), Tensor::from_f32(lt.shape, vec![lt.fill; n])?);
    }
    Ok(w)
}

/// Loads the local slots (and the input scales of every expert, if the format reads them).
pub(crate) fn load_weights(
    f: &dyn Format,
    weights: &mut ExpertWeights,
    layout: &LayerLayout,
    src: &dyn WeightSource,
    allow_partial: bool,
) -> Result<()> {
    check_layout(f, layout)?;
    check_created(f, weights, layout)?;
    if let Some(rule) = f.input_scales() {
        load_input_scales(weights, layout, src, allow_partial, rule)?;
    }
    let specs = all_specs(f, layout);
    let regs = expert_tensors(f, layout);
    let mut staging = Staging::default();
    for (slot, &e) in layout.local_expert_ids.iter().enumerate() {
        let fetched = fetch_expert(src, layout, &specs, e)?;
        if let Some(name) = fetched.missing.into_iter().next() {
            if allow_partial {
                tracing::debug!(slot, expert = e, missing = %name, "partial load: slot left for a later source");
                continue;
            }
            return Err(MoeError::MissingTensor { name });
        }
        // Fresh zeroed buffers: short TP shards leave zero tails.
        staging.tensors.clear();
        for reg in &regs {
            let n = reg.per_slot_shape.iter().product();
            let buf = if reg.dtype.size_in_bytes() == 1 {
                Staged::Bytes(vec![0; n])
            } else {
                Staged::F32(vec![0.0; n])
            };
            staging.tensors.push((reg.name.clone(), buf));
        }
        stage_expert(f, layout, e, &fetched.found, &mut staging)?;
        commit(weights, slot, &staging)?;
        weights.loaded[slot] = true;
    }
    // New bytes invalidate any kernel-layout transform (core spec §6.5).
    weights.transformed = false;
    Ok(())
}

/// Completeness, then the format's layer folding.
pub(crate) fn process_weights_after_loading(
    f: &dyn Format,
    weights: &mut ExpertWeights,
    layout: &LayerLayout,
) -> Result<()> {
    check_created(f, weights, layout)?;
    if let Some(slot) = weights.loaded.iter().position(|&l| !l) {
        let expert = layout.local_expert_ids.get(slot).copied().unwrap_or(usize::MAX);
        return Err(MoeError::lifecycle(format!(
            "local slot {slot} (expert {expert}) has no weights: its tensors were in no source given to load_weights"
        )));
    }
    if f.input_scales().is_some() {
        let gated = layout.activation.is_gated();
        for (table, proj) in [
            (FC31_EXPERT_INPUT_SCALES, Proj::W1),
            (FC2_EXPERT_INPUT_SCALES, Proj::W2),
        ] {
            if let Some(e) = f32_tensor(weights, table)?.iter().position(|v| v.is_nan()) {
                let mut name = expert_tensor_name(e, proj, "input_scale");
                if gated && proj == Proj::W1 {
                    name = format!("{name}` or `{}", expert_tensor_name(e, Proj::W3, "input_scale"));
                }
                return Err(MoeError::MissingTensor { name });
            }
        }
    }
    f.fold_layer_scales(weights, layout)
}

pub(crate) fn setup_quant_scales(f: &dyn Format, weights: &mut ExpertWeights, layout: &LayerLayout) -> Result<()> {
    check_created(f, weights, layout)?;
    f.setup_quant_scales(weights, layout)
}

/// The kernel view of local slot `slot`.
pub(crate) fn expert_view<'a>(
    f: &dyn Format,
    weights: &'a ExpertWeights,
    layout: &LayerLayout,
    slot: usize,
) -> Result<ExpertView<'a>> {
    if slot >= layout.num_local_slots() {
        return Err(MoeError::shape(
            "local slot",
            format!("< {}", layout.num_local_slots()),
            &[slot],
        ));
    }
    let bias = |fc: Fc| -> Result<Option<FloatSlice<'a>>> {
        if !layout.bias {
            return Ok(None);
        }
        let name = fc.tensor("bias");
        let len = fc.dims(layout).0;
        FloatSlice::from_tensor(weights.get(&name)?, &name)?
            .chunk(&name, slot, len)
            .map(Some)
    };
    Ok(ExpertView {
        w3_w1: f.matrix(weights, layout, Fc::Fc1, slot)?,
        w3_w1_bias: bias(Fc::Fc1)?,
        w2: f.matrix(weights, layout, Fc::Fc2, slot)?,
        w2_bias: bias(Fc::Fc2)?,
        fc1_input: f.act_quant(weights, Fc::Fc1)?,
        fc2_input: f.act_quant(weights, Fc::Fc2)?,
    })
}

// --- loading ------------------------------------------------------------------------------

/// A checkpoint tensor of one expert, checked against its spec.
struct Found<'a> {
    proj: Proj,
    spec: TensorSpec,
    name: String,
    view: TensorView<'a>,
}

struct Fetched<'a> {
    found: Vec<Found<'a>>,
    missing: Vec<String>,
}

/// Checks the dtype (first: a wrong dtype is the clearer diagnosis of a mixed-format
/// checkpoint) and shape of a checkpoint tensor of a projection with weight `[out, in]`.
fn check_view(name: &str, v: &TensorView<'_>, spec: &TensorSpec, out: usize, inp: usize) -> Result<()> {
    if !spec.accepted.contains(&v.dtype) {
        let expected: Vec<&str> = spec.accepted.iter().map(|d| d.as_str()).collect();
        return Err(MoeError::DTypeMismatch {
            what: name.into(),
            expected: expected.join(" or "),
            actual: v.dtype.to_string(),
        });
    }
    let want = spec.geometry.shape(out, inp);
    let scalar = spec.geometry == Geometry::Scalar;
    if v.shape != want && !(scalar && v.shape == [1]) {
        let expected = if scalar {
            "[] or [1]".to_string()
        } else {
            format!("{want:?}")
        };
        return Err(MoeError::shape(name, expected, &v.shape));
    }
    Ok(())
}

/// Looks up every tensor of expert `e` and checks those present.
fn fetch_expert<'a>(
    src: &'a dyn WeightSource,
    layout: &LayerLayout,
    specs: &[TensorSpec],
    e: usize,
) -> Result<Fetched<'a>> {
    let (h, i) = (layout.hidden_size, layout.intermediate_size);
    let mut fetched = Fetched {
        found: Vec::new(),
        missing: Vec::new(),
    };
    for &proj in projections(layout) {
        let (out, inp) = if proj == Proj::W2 { (h, i) } else { (i, h) };
        for spec in specs {
            let name = expert_tensor_name(e, proj, spec.suffix);
            match src.get(&name)? {
                Some(view) => {
                    check_view(&name, &view, spec, out, inp)?;
                    fetched.found.push(Found {
                        proj,
                        spec: *spec,
                        name,
                        view,
                    });
                }
                None => fetched.missing.push(name),
            }
        }
    }
    Ok(fetched)
}

/// A scale read from a checkpoint: positive and finite, or the checkpoint is refused.
fn scalar_value(name: &str, v: &TensorView<'_>) -> Result<f32> {
    let x = v.to_f32_vec(name)?.first().copied().unwrap_or(f32::NAN);
    if x > 0.0 && x.is_finite() {
        Ok(x)
    } else {
        Err(MoeError::BadCheckpoint {
            path: name.into(),
            detail: format!("a scale must be positive and finite, got {x}"),
        })
    }
}

/// The raw bytes of a one-byte-dtype view.
fn view_bytes<'v>(name: &str, v: &'v TensorView<'_>) -> Result<&'v [u8]> {
    if v.dtype.size_in_bytes() != 1 || v.data.len() != v.numel() {
        return Err(MoeError::BadCheckpoint {
            path: name.into(),
            detail: format!(
                "{} bytes for {:?} {}, expected {}",
                v.data.len(),
                v.shape,
                v.dtype,
                v.numel()
            ),
        });
    }
    Ok(&v.data)
}

/// Shards every found tensor into `staging` and lets the format fold the scalars.
fn stage_expert(
    f: &dyn Format,
    layout: &LayerLayout,
    e: usize,
    found: &[Found<'_>],
    staging: &mut Staging,
) -> Result<()> {
    let mut scalars = Scalars::default();
    for t in found {
        match t.spec.slot {
            None => scalars.0.push((t.proj, t.spec.suffix, scalar_value(&t.name, &t.view)?)),
            Some(slot) => stage_tensor(layout, t, slot, staging)?,
        }
    }
    f.finish_slot(layout, e, &scalars, staging)
}

fn stage_tensor(layout: &LayerLayout, t: &Found<'_>, slot: SlotTensor, staging: &mut Staging) -> Result<()> {
    let dst_name = Fc::of(t.proj).tensor(slot.suffix);
    let byte_slot = matches!(slot.dtype, SlotDType::Is(d) if d.size_in_bytes() == 1);
    if byte_slot {
        let src = view_bytes(&t.name, &t.view)?;
        place(src, staging.bytes_mut(&dst_name)?, layout, t)
    } else {
        let src = t.view.to_f32_vec(&t.name)?;
        place(&src, staging.f32_mut(&dst_name)?, layout, t)
    }
}

/// Copies this rank's shard of `src` (the whole checkpoint tensor, shape already checked)
/// into its place in `dst` (one slot's share of the per-slot tensor).
fn place<T: Copy + Default>(src: &[T], dst: &mut [T], layout: &LayerLayout, t: &Found<'_>) -> Result<()> {
    let (h, i) = (layout.hidden_size, layout.intermediate_size);
    let shard = Shard::of(i, layout.tp_size, layout.tp_rank);
    let name = t.name.as_str();
    let half = usize::from(t.proj == Proj::W1 && layout.activation.is_gated());
    let have = dst.len();
    let misfit =
        |want: usize| MoeError::lifecycle(format!("staging of `{name}` holds {have} elements, expected {want}"));
    // FC1 sources are COLUMN-sharded (their rows are the intermediate dimension) into half
    // `half` of the `[w3 ; w1]` stack; FC2 sources are ROW-sharded (their columns).
    let (rows_unit, cols) = match t.spec.geometry {
        Geometry::Matrix { rows, cols, .. } => (rows, cols),
        Geometry::PerRow => (1, 1),
        Geometry::Scalar => return Err(MoeError::lifecycle(format!("scalar `{name}` has no per-slot tensor"))),
    };
    match (Fc::of(t.proj), t.spec.geometry) {
        (Fc::Fc1, _) => {
            let ncols = if t.spec.geometry == Geometry::PerRow {
                1
            } else {
                h.div_ceil(cols)
            };
            let units = shard.in_units(i, rows_unit, name)?;
            let len = units.width * ncols;
            let want = (half + 1) * len;
            let d = dst.get_mut(half * len..want).ok_or_else(|| misfit(want))?;
            copy_row_shard(src, ncols, units, d);
        }
        (Fc::Fc2, Geometry::PerRow) => {
            if have != src.len() {
                return Err(misfit(src.len()));
            }
            if t.spec.once_across_tp && layout.tp_rank != 0 {
                dst.fill(T::default());
            } else {
                dst.copy_from_slice(src);
            }
        }
        (Fc::Fc2, _) => {
            let (nrows, ncols) = (h.div_ceil(rows_unit), i.div_ceil(cols));
            let units = shard.in_units(i, cols, name)?;
            if have != nrows * units.width {
                return Err(misfit(nrows * units.width));
            }
            copy_col_shard(src, nrows, ncols, units, dst);
        }
    }
    Ok(())
}

/// Writes a staged slot into the layer tensors.
fn commit(weights: &mut ExpertWeights, slot: usize, staging: &Staging) -> Result<()> {
    for (name, data) in &staging.tensors {
        let t = weights.get_mut(name)?;
        match data {
            Staged::F32(v) => write_slot(t, name, slot, v)?,
            Staged::Bytes(v) => write_slot_bytes(t, name, slot, v)?,
        }
    }
    Ok(())
}

/// torch.allclose's default criterion.
pub(crate) fn allclose(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-8 + 1e-5 * b.abs()
}

/// Reads `{e}.wX.input_scale` of EVERY expert (not only local ones: the activation scale of
/// the layer is their maximum, so it cannot depend on placement) into the layer tables.
fn load_input_scales(
    weights: &mut ExpertWeights,
    layout: &LayerLayout,
    src: &dyn WeightSource,
    allow_partial: bool,
    rule: Fc31InputScale,
) -> Result<()> {
    let spec = TensorSpec::scalar("input_scale");
    let get = |e: usize, proj: Proj| -> Result<Option<f32>> {
        let name = expert_tensor_name(e, proj, "input_scale");
        match src.get(&name)? {
            Some(v) => {
                check_view(&name, &v, &spec, 1, 1)?;
                scalar_value(&name, &v).map(Some)
            }
            None if allow_partial => Ok(None),
            None => Err(MoeError::MissingTensor { name }),
        }
    };
    let gated = layout.activation.is_gated();
    let mut fc31 = Vec::with_capacity(layout.num_experts);
    let mut fc2 = Vec::with_capacity(layout.num_experts);
    for e in 0..layout.num_experts {
        let w1 = get(e, Proj::W1)?;
        let v31 = if gated {
            match (w1, get(e, Proj::W3)?) {
                (Some(a), Some(b)) => Some(combine_fc31(rule, e, a, b)?),
                _ => None,
            }
        } else {
            w1
        };
        fc31.push(v31);
        fc2.push(get(e, Proj::W2)?);
    }
    // Written only after every read succeeded.
    for (table, values) in [(FC31_EXPERT_INPUT_SCALES, fc31), (FC2_EXPERT_INPUT_SCALES, fc2)] {
        let t = f32_tensor_mut(weights, table)?;
        for (dst, v) in t.iter_mut().zip(values) {
            if let Some(v) = v {
                *dst = v;
            }
        }
    }
    Ok(())
}

fn combine_fc31(rule: Fc31InputScale, e: usize, w1: f32, w3: f32) -> Result<f32> {
    match rule {
        Fc31InputScale::Max => Ok(w1.max(w3)),
        Fc31InputScale::Agree if allclose(w3, w1) => Ok(w1.max(w3)),
        Fc31InputScale::Agree => Err(MoeError::BadCheckpoint {
            path: expert_tensor_name(e, Proj::W3, "input_scale"),
            detail: format!(
                "{w3} differs from {} = {w1}: FC1's input is quantized once for both halves, so w1 and w3 must share their input scale",
                expert_tensor_name(e, Proj::W1, "input_scale")
            ),
        }),
    }
}

// --- accessors for formats ----------------------------------------------------------------

/// All values of the f32 tensor `name`.
pub(crate) fn f32_tensor<'a>(w: &'a ExpertWeights, name: &str) -> Result<&'a [f32]> {
    w.get(name)?.as_f32(name)
}

/// All values of the f32 tensor `name`, mutable.
pub(crate) fn f32_tensor_mut<'a>(w: &'a mut ExpertWeights, name: &str) -> Result<&'a mut [f32]> {
    let t = w.get_mut(name)?;
    let dtype = t.dtype();
    match t.host_mut(name)? {
        HostStorage::F32(v) => Ok(v),
        _ => Err(MoeError::DTypeMismatch {
            what: name.into(),
            expected: DType::F32.to_string(),
            actual: dtype.to_string(),
        }),
    }
}

/// Slot `slot` of the byte tensor `name`.
pub(crate) fn slot_bytes_of<'a>(w: &'a ExpertWeights, name: &str, slot: usize) -> Result<&'a [u8]> {
    slot_bytes(w.get(name)?, name, slot)
}

/// Slot `slot` of the f32 tensor `name`.
pub(crate) fn slot_f32_of<'a>(w: &'a ExpertWeights, name: &str, slot: usize) -> Result<&'a [f32]> {
    slot_f32(w.get(name)?, name, slot)
}

/// The value of slot `slot` of the per-slot scalar tensor `name` (`[S]`).
pub(crate) fn slot_scalar(w: &ExpertWeights, name: &str, slot: usize) -> Result<f32> {
    let v = slot_f32_of(w, name, slot)?;
    v.first()
        .copied()
        .ok_or_else(|| MoeError::shape(name, "one value per slot", &[v.len()]))
}

/// The folded layer scalar `name`: positive and finite once `process_weights_after_loading`
/// has run, a lifecycle error before.
pub(crate) fn layer_scalar(w: &ExpertWeights, name: &str) -> Result<f32> {
    let v = f32_tensor(w, name)?.first().copied().unwrap_or(0.0);
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(MoeError::lifecycle(format!(
            "`{name}` is not set: the weights were not processed (process_weights_after_loading)"
        )))
    }
}

/// Sets the layer scalar `name` (`[1]`).
pub(crate) fn set_layer_scalar(w: &mut ExpertWeights, name: &str, v: f32) -> Result<()> {
    f32_tensor_mut(w, name)?.fill(v);
    Ok(())
}

/// Sets every slot of the per-slot scalar `dst` to `f(src[slot])`.
pub(crate) fn derive_per_slot(w: &mut ExpertWeights, dst: &str, src: &str, f: impl Fn(f32) -> f32) -> Result<()> {
    let src = f32_tensor(w, src)?.to_vec();
    for (d, s) in f32_tensor_mut(w, dst)?.iter_mut().zip(src) {
        *d = f(s);
    }
    Ok(())
}

/// Gives both halves of the staged FC1 tensor `codes` (E4M3 bytes: FP8 weights or NVFP4 block
/// scales) the common per-tensor scale `max(s_w3, s_w1)`: each element of the half whose own
/// scale is smaller becomes `e4m3_sat(e4m3(c) * s_own / s_common)` (the half holding the
/// maximum is unchanged). Returns the common scale. TensorRT-LLM's FP8 QDQ method does this
/// because its kernel applies one scale per FC1 GEMM; so does the host kernel here.
pub(crate) fn unify_fc1_halves(staging: &mut Staging, codes: &str, s_w3: f32, s_w1: f32) -> Result<f32> {
    use moe_kernels::codec::fp8::{e4m3_to_f32, f32_to_e4m3_sat};
    let common = s_w3.max(s_w1);
    let c = staging.bytes_mut(codes)?;
    let half = c.len() / 2;
    for (part, own) in c.chunks_mut(half.max(1)).zip([s_w3, s_w1]) {
        if own != common {
            for q in part.iter_mut() {
                *q = f32_to_e4m3_sat(e4m3_to_f32(*q) * own / common);
            }
        }
    }
    Ok(common)
}

/// Largest value of a complete all-expert table.
pub(crate) fn table_max(w: &ExpertWeights, name: &str) -> Result<f32> {
    Ok(f32_tensor(w, name)?.iter().fold(0.0f32, |m, &v| m.max(v)))
}

/// Implements `moe_core::QuantMethod` and [`crate::HostQuantMethod`] for a [`Format`] by
/// delegating to the engine, so every method shares one lifecycle implementation.
macro_rules! impl_quant_method {
    ($ty:ty) => {
        impl moe_core::QuantMethod for $ty {
            fn name(&self) -> &'static str {
                $crate::format::Format::name(self)
            }

            fn algo(&self) -> moe_core::QuantAlgo {
                $crate::format::Format::algo(self)
            }

            fn create_weights(&self, layout: &moe_core::LayerLayout) -> moe_core::Result<moe_core::ExpertWeights> {
                $crate::engine::create_weights(self, layout)
            }

            fn load_weights(
                &self,
                weights: &mut moe_core::ExpertWeights,
                layout: &moe_core::LayerLayout,
                src: &dyn moe_core::WeightSource,
                allow_partial: bool,
            ) -> moe_core::Result<()> {
                $crate::engine::load_weights(self, weights, layout, src, allow_partial)
            }

            fn process_weights_after_loading(
                &self,
                weights: &mut moe_core::ExpertWeights,
                layout: &moe_core::LayerLayout,
            ) -> moe_core::Result<()> {
                $crate::engine::process_weights_after_loading(self, weights, layout)
            }

            fn transform_weights(
                &self,
                weights: &mut moe_core::ExpertWeights,
                _layout: &moe_core::LayerLayout,
            ) -> moe_core::Result<()> {
                // The host kernels read the canonical layout directly: nothing to shuffle.
                weights.transformed = true;
                Ok(())
            }

            fn setup_quant_scales(
                &self,
                weights: &mut moe_core::ExpertWeights,
                layout: &moe_core::LayerLayout,
            ) -> moe_core::Result<()> {
                $crate::engine::setup_quant_scales(self, weights, layout)
            }

            fn quantize_input<'a>(
                &self,
                x: &'a moe_core::Tensor,
                weights: &moe_core::ExpertWeights,
            ) -> moe_core::Result<moe_core::QuantizedInput<'a>> {
                $crate::format::Format::quantize_input(self, x, weights)
            }

            fn eplb_support_status(&self) -> moe_core::EplbSupportStatus {
                $crate::format::Format::eplb_support_status(self)
            }

            fn need_load_shared_weights(&self) -> bool {
                // No host staging copies: experts move between slots by copying their
                // registered per-slot tensors, which hold everything a slot needs.
                false
            }

            fn expert_tensors(&self, layout: &moe_core::LayerLayout) -> Vec<moe_core::ExpertTensorRegistration> {
                $crate::layout::expert_tensors(self, layout)
            }
        }

        impl $crate::host::HostQuantMethod for $ty {
            fn expert_view<'a>(
                &self,
                weights: &'a moe_core::ExpertWeights,
                layout: &moe_core::LayerLayout,
                slot: usize,
            ) -> moe_core::Result<moe_kernels::cpu::expert_mlp::ExpertView<'a>> {
                $crate::engine::expert_view(self, weights, layout, slot)
            }

            fn input_quant(
                &self,
                weights: &moe_core::ExpertWeights,
            ) -> moe_core::Result<moe_kernels::cpu::act_quant::ActQuant> {
                $crate::format::Format::act_quant(self, weights, $crate::format::Fc::Fc1)
            }
        }
    };
}
pub(crate) use impl_quant_method;
