//! Expert-parallel load balancing from Python: placements planned from per-expert loads
//! (`moe_eplb::plan`, as `moe eplb plan`) and TensorRT-LLM's placement YAML of a plan.
//! Plans cross as JSON (the serde form of `moe_eplb::PlanOutput`); the package makes dicts.

use moe_core::MoeError;
use moe_eplb::{Algorithm, PlanOutput};
use pyo3::prelude::*;

use crate::errors::guard;

/// A placement for every layer of `load` (`[L][E]` tokens per expert), as JSON.
#[pyfunction]
#[pyo3(signature = (load, num_slots, num_gpus, *, num_nodes=1, num_groups=1, algorithm="default", max_changed_slots=None, previous=None))]
pub fn eplb_plan(
    py: Python<'_>,
    load: Vec<Vec<f64>>,
    num_slots: usize,
    num_gpus: usize,
    num_nodes: usize,
    num_groups: usize,
    algorithm: &str,
    max_changed_slots: Option<usize>,
    previous: Option<Vec<Vec<usize>>>,
) -> PyResult<String> {
    let algorithm = algorithm.to_string();
    py.detach(move || {
        guard(|| {
            let mut algo: Algorithm = algorithm.parse()?;
            if let Algorithm::Default { max_changed_slots: m } = &mut algo {
                *m = max_changed_slots;
            }
            let out = moe_eplb::plan(
                &load,
                num_slots,
                num_gpus,
                num_nodes,
                num_groups,
                algo,
                previous.as_deref(),
            )?;
            serde_json::to_string(&out).map_err(|e| MoeError::config("plan", format!("cannot serialise: {e}")))
        })
    })
}

/// TensorRT-LLM's static placement file (YAML) of a plan given as JSON.
#[pyfunction]
#[pyo3(signature = (plan_json, layer_indices, layer_updates_per_iter=0))]
pub fn eplb_placement_yaml(
    plan_json: &str,
    layer_indices: Vec<usize>,
    layer_updates_per_iter: usize,
) -> PyResult<String> {
    guard(|| {
        let plan: PlanOutput =
            serde_json::from_str(plan_json).map_err(|e| MoeError::config("plan", format!("not a plan: {e}")))?;
        moe_eplb::placement_yaml(&plan, &layer_indices, layer_updates_per_iter)
    })
}
