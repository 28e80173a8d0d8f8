//! The tensors a format creates for a layout (per-slot registrations and layer tensors) and
//! the checks of a layout against a format: TP geometry, local experts, and block alignment
//! (a shard or the fused `[w3 ; w1]` stacking must never split a quantization block).

use moe_core::weights::Proj;
use moe_core::{DType, ExpertTensorRegistration, ExpertWeights, LayerLayout, MoeError, Result};

use crate::format::{FLOATS, Fc, Format, Geometry, LayerTensor, SlotDType, TensorSpec};
use crate::names::{FC2_EXPERT_INPUT_SCALES, FC31_EXPERT_INPUT_SCALES};
use crate::shard::Shard;

/// The format's specs plus the shared bias spec (`{e}.wX.bias`, `[out]`, FC2's on TP rank 0).
pub(crate) fn all_specs(f: &dyn Format, layout: &LayerLayout) -> Vec<TensorSpec> {
    let mut specs = f.specs();
    if layout.bias {
        let mut bias = TensorSpec::slotted("bias", FLOATS, Geometry::PerRow, "bias", f.bias_dtype());
        bias.once_across_tp = true;
        specs.push(bias);
    }
    specs
}

/// Shape of one slot's share of the per-slot tensor a spec of GEMM `fc` lands in.
fn slot_shape(fc: Fc, geometry: Geometry, layout: &LayerLayout) -> Vec<usize> {
    let (h, ipp, expand) = (
        layout.hidden_size,
        layout.intermediate_per_partition,
        layout.activation.expand_ratio(),
    );
    match (fc, geometry) {
        (Fc::Fc1, Geometry::Matrix { rows, cols, .. }) => vec![expand * ipp.div_ceil(rows), h.div_ceil(cols)],
        (Fc::Fc2, Geometry::Matrix { rows, cols, .. }) => vec![h.div_ceil(rows), ipp.div_ceil(cols)],
        (Fc::Fc1, Geometry::PerRow) => vec![expand * ipp],
        (Fc::Fc2, Geometry::PerRow) => vec![h],
        (_, Geometry::Scalar) => vec![],
    }
}

/// Every per-slot tensor of `f` for `layout`, for creation and EPLB migration alike (so the
/// two cannot disagree).
pub(crate) fn expert_tensors(f: &dyn Format, layout: &LayerLayout) -> Vec<ExpertTensorRegistration> {
    let mut regs = Vec::new();
    for fc in [Fc::Fc1, Fc::Fc2] {
        for spec in all_specs(f, layout) {
            let Some(slot) = spec.slot else { continue };
            regs.push(ExpertTensorRegistration {
                name: fc.tensor(slot.suffix).into_owned(),
                dtype: match slot.dtype {
                    SlotDType::Layer => layout.dtype,
                    SlotDType::Is(d) => d,
                },
                per_slot_shape: slot_shape(fc, spec.geometry, layout),
            });
        }
    }
    regs.extend(f.derived_slot_tensors(layout));
    regs
}

/// Layer tensors of `f` (never migrated): the format's own plus the all-expert input-scale
/// tables, NaN until read.
pub(crate) fn layer_tensors(f: &dyn Format, layout: &LayerLayout) -> Vec<LayerTensor> {
    let mut t = f.layer_tensors(layout);
    if f.input_scales().is_some() {
        for name in [FC31_EXPERT_INPUT_SCALES, FC2_EXPERT_INPUT_SCALES] {
            t.push(LayerTensor {
                name,
                shape: vec![layout.num_experts],
                fill: f32::NAN,
            });
        }
    }
    t
}

/// Per-slot f32 scalar registrations (`[S]` each), one per name.
pub(crate) fn per_slot_scalars(names: &[&str]) -> Vec<ExpertTensorRegistration> {
    names
        .iter()
        .map(|name| ExpertTensorRegistration {
            name: (*name).into(),
            dtype: DType::F32,
            per_slot_shape: vec![],
        })
        .collect()
}

/// Checks the layout itself: float activations, TP rank, per-rank width, local experts.
fn check_geometry(layout: &LayerLayout) -> Result<()> {
    if !layout.dtype.is_float_activation() {
        return Err(MoeError::DTypeMismatch {
            what: "layer dtype".into(),
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
    if let Some((slot, &e)) = layout
        .local_expert_ids
        .iter()
        .enumerate()
        .find(|(_, e)| **e >= layout.num_experts)
    {
        return Err(MoeError::config(
            "local_expert_ids",
            format!(
                "local slot {slot} names expert {e}, but there are {} experts",
                layout.num_experts
            ),
        ));
    }
    Ok(())
}

/// Checks that the blocks of every blocked tensor fit the layer: exact blocks divide H and I,
/// this rank's TP shard holds whole blocks, and each half of the fused FC1 holds whole row
/// blocks (its scales are indexed as one matrix). Errors name the per-slot tensor.
fn check_blocks(f: &dyn Format, layout: &LayerLayout) -> Result<()> {
    let (h, i, ipp) = (
        layout.hidden_size,
        layout.intermediate_size,
        layout.intermediate_per_partition,
    );
    let shard = Shard::of(i, layout.tp_size, layout.tp_rank);
    for spec in f.specs() {
        let (Geometry::Matrix { rows, cols, exact }, Some(slot)) = (spec.geometry, spec.slot) else {
            continue;
        };
        let (fc1, fc2) = (Fc::Fc1.tensor(slot.suffix), Fc::Fc2.tensor(slot.suffix));
        if exact {
            let dims = [
                ("hidden_size", h, cols, &fc1),
                ("intermediate_size", i, rows, &fc1),
                ("hidden_size", h, rows, &fc2),
                ("intermediate_size", i, cols, &fc2),
            ];
            for (field, dim, unit, name) in dims {
                if dim % unit != 0 {
                    return Err(MoeError::config(
                        field,
                        format!(
                            "{dim} is not a multiple of {unit}, the block of `{name}` along it ({})",
                            f.name()
                        ),
                    ));
                }
            }
        }
        // FC1 shards its rows (the intermediate dimension), FC2 its columns.
        shard.in_units(i, rows, &fc1)?;
        shard.in_units(i, cols, &fc2)?;
        if layout.activation.is_gated() && ipp % rows != 0 {
            return Err(MoeError::config(
                "intermediate_size",
                format!(
                    "the w3 and w1 halves of `{fc1}` must each hold whole {rows}-row blocks, but this rank holds {ipp} rows per half"
                ),
            ));
        }
    }
    Ok(())
}

/// Every check of `layout` against `f`.
pub(crate) fn check_layout(f: &dyn Format, layout: &LayerLayout) -> Result<()> {
    check_geometry(layout)?;
    f.check_layout(layout)?;
    check_blocks(f, layout)
}

/// Checks that `weights` holds the tensors `create_weights` made for `layout`.
pub(crate) fn check_created(f: &dyn Format, weights: &ExpertWeights, layout: &LayerLayout) -> Result<()> {
    let s = layout.num_local_slots();
    let stale = |name: &str, have: String, want: String| {
        MoeError::lifecycle(format!(
            "expert tensor `{name}` is {have}, but the layout needs {want}; run create_weights for this layout"
        ))
    };
    for reg in expert_tensors(f, layout) {
        let t = weights.get(&reg.name)?;
        let mut want = vec![s];
        want.extend_from_slice(&reg.per_slot_shape);
        if t.shape() != want.as_slice() || t.dtype() != reg.dtype {
            return Err(stale(
                &reg.name,
                format!("{} {:?}", t.dtype(), t.shape()),
                format!("{} {want:?}", reg.dtype),
            ));
        }
    }
    for lt in layer_tensors(f, layout) {
        let t = weights.get(lt.name)?;
        if t.shape() != lt.shape.as_slice() || t.dtype() != DType::F32 {
            return Err(stale(
                lt.name,
                format!("{} {:?}", t.dtype(), t.shape()),
                format!("f32 {:?}", lt.shape),
            ));
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

/// The projections of a layer in lookup order: `w3` (up) only when gated.
pub(crate) fn projections(layout: &LayerLayout) -> &'static [Proj] {
    if layout.activation.is_gated() {
        &[Proj::W3, Proj::W1, Proj::W2]
    } else {
        &[Proj::W1, Proj::W2]
    }
}
