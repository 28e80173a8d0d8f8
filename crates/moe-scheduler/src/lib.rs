//! Forward-time policy of the MoE layer.
//!
//! A scheduler turns one layer call into chunk calls of the backend's `run_moe`: it pads
//! attention-DP ranks, agrees chunk counts across ranks, orders routing, EPLB hooks,
//! quantization and dispatch/combine, and concatenates the chunks. It reads the assembled
//! layer through [`moe_core::LayerView`] and never writes its state: no weight lifecycle, no
//! `repeat_idx`, no creation of communication strategies.

mod chunk_body;
mod chunking;
mod external;
mod fused;

pub use chunking::{calculate_num_chunks, split_chunk};
pub use external::ExternalCommScheduler;
pub use fused::FusedCommScheduler;

use moe_core::{MoeScheduler, Result, SchedulerKind};

/// The scheduler a backend's [`SchedulerKind`] asks for.
pub fn create_moe_scheduler(kind: SchedulerKind) -> Result<Box<dyn MoeScheduler>> {
    match kind {
        SchedulerKind::ExternalComm => Ok(Box::new(ExternalCommScheduler)),
        SchedulerKind::FusedComm => Ok(Box::new(FusedCommScheduler)),
    }
}
