//! The per-layer load-balancer contract, called by schedulers in the order of TensorRT-LLM's
//! spec: wait GPU stage (first chunk), statistic, route, set CPU stage (last chunk).
//!
//! Also the migration plan a dynamic balancer hands to the assembler, which copies the slot
//! weights between forwards and then tells the balancer to switch its routing.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tensor::Tensor;

/// One rebalance decision, kept for metrics and logged with `tracing::info!`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceReport {
    pub layer_idx: usize,
    /// Iteration (1-based) at whose end the plan was made.
    pub iteration: usize,
    pub algorithm: String,
    /// Mean rank load / max rank load of the current placement under the decayed loads.
    pub balancedness_before: f64,
    /// The same for the new placement.
    pub balancedness_after: f64,
    pub changed_slots: usize,
    /// Whether the assembler has applied the migration (always true when nothing moved).
    pub applied: bool,
}

/// One slot whose expert changes in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMove {
    /// Global slot id (`rank * slots_per_rank + local_slot`).
    pub slot: usize,
    /// Expert the slot serves now.
    pub from_expert: usize,
    /// Expert the slot serves once the migration is applied.
    pub to_expert: usize,
}

/// A new placement of one layer and the slots whose weights must be rewritten to reach it.
///
/// `moves` lists exactly the slots where `new_slot_to_expert` differs from the current
/// table, ascending by slot; a rank copies the weights of `to_expert` into each of its own
/// moved slots (TensorRT-LLM copies from host memory, never GPU to GPU).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// Global slot -> expert after the migration, length `num_slots`.
    pub new_slot_to_expert: Vec<usize>,
    pub moves: Vec<SlotMove>,
}

/// One layer's EPLB handle.
pub trait LoadBalancer: Send {
    /// Dynamic (statistics + migration) rather than a fixed placement.
    fn is_dynamic(&self) -> bool;
    /// How many times the layer runs per iteration (first/last span the repeats).
    fn repeat_count(&self) -> usize {
        1
    }
    fn start_wait_gpu_stage(&mut self) -> Result<()>;
    fn done_wait_gpu_stage(&mut self) -> Result<()>;
    /// Counts `expert_ids` ([N, k] i32); with `ignore_allreduce` only locally.
    fn update_statistic(&mut self, expert_ids: &Tensor, first: bool, last: bool, ignore_allreduce: bool) -> Result<()>;
    /// Maps expert ids to global slot ids (replica choice is the balancer's).
    fn route(&mut self, expert_ids: &Tensor, use_dp: bool) -> Result<Tensor>;
    fn start_set_cpu_stage(&mut self) -> Result<()>;
    fn done_set_cpu_stage(&mut self) -> Result<()>;
    /// The migration the balancer has decided on and not yet handed out; the assembler polls
    /// it between forwards. Static balancers never migrate.
    fn take_migration(&mut self) -> Option<MigrationPlan> {
        None
    }
    /// Called by the assembler once the slot weights of `plan` are in place; only then does
    /// the balancer route through the new placement (routing earlier would send tokens to
    /// slots still holding the old expert's weights).
    /// Every rebalance decision so far (dynamic balancers), oldest first.
    fn rebalance_reports(&self) -> &[RebalanceReport] {
        &[]
    }

    fn migration_applied(&mut self, _plan: &MigrationPlan) -> Result<()> {
        Ok(())
    }
}
