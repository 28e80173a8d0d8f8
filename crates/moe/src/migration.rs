//! EPLB weight migration: host staging copies of every expert, laid out and processed by the
//! layer's quant method exactly like a slot, from which a migration plan's moves are copied
//! into the backend's slots. The assembler applies a plan between forwards (after the last
//! chunk's set-CPU stage), so no forward ever reads a slot mid-copy; the balancer switches
//! its routing only once the copy is done.
//!
//! Cost: every rank of a dynamic-EPLB layer keeps a processed host copy of every expert (as
//! TensorRT-LLM's shared host staging does), so it can host any expert after a rebalance.

use moe_core::{
    ExpertPartition, ExpertWeights, LayerLayout, MigrationPlan, MoeBackend, MoeError, Result, WeightSource,
};

/// Every expert of the layer as one "slot" each (slot index = expert id), in the processed
/// layout of the backend's quant method.
pub(crate) struct Staging {
    weights: ExpertWeights,
}

impl Staging {
    /// Loads and processes all experts from `src` with the backend's quant method.
    pub(crate) fn load(backend: &dyn MoeBackend, src: &dyn WeightSource) -> Result<Staging> {
        let qm = backend.quant_method();
        let layout = LayerLayout {
            local_expert_ids: (0..backend.layout().num_experts).collect(),
            ..backend.layout().clone()
        };
        let mut weights = qm.create_weights(&layout)?;
        qm.load_weights(&mut weights, &layout, src, false)?;
        qm.process_weights_after_loading(&mut weights, &layout)?;
        qm.transform_weights(&mut weights, &layout)?;
        qm.setup_quant_scales(&mut weights, &layout)?;
        Ok(Staging { weights })
    }

    /// Copies every registered per-expert tensor of each move that lands on this rank.
    /// Returns the number of local slots rewritten.
    pub(crate) fn apply(
        &self,
        backend: &mut dyn MoeBackend,
        partition: &ExpertPartition,
        plan: &MigrationPlan,
    ) -> Result<usize> {
        let registrations = backend.quant_method().expert_tensors(backend.layout());
        let num_local = partition.expert_size_per_partition();
        let mut moved = 0;
        for mv in &plan.moves {
            let Some(local) = partition.local_slot(i32::try_from(mv.slot).unwrap_or(-1)) else {
                continue;
            };
            for reg in &registrations {
                let src = self.weights.get(&reg.name)?;
                let dst = backend.expert_weights_mut().get_mut(&reg.name)?;
                if dst.rows() != num_local {
                    return Err(MoeError::lifecycle(format!(
                        "registered expert tensor `{}` has {} rows, expected one per local slot ({num_local})",
                        reg.name,
                        dst.rows()
                    )));
                }
                dst.copy_row_from(local, src, mv.to_expert)?;
            }
            moved += 1;
        }
        Ok(moved)
    }
}
