//! Expert-parallel load balancing, as plain data and pure functions: the slot/expert
//! vocabulary, expert-to-slot routing over a placement, expert-load statistics, placement
//! algorithms (DeepSeek's reference, TensorRT-LLM's greedy, and a migration-aware default),
//! the dynamic balancer that turns statistics into migration plans, and TensorRT-LLM's
//! static placement files.
//!
//! This crate touches no device memory and does no I/O; it consumes expert ids and emits
//! slot ids, plans and reports. Files are read by callers and handed over as text or as
//! serde data.

mod deepseek;
mod default;
mod dynamic_balancer;
mod greedy;
mod placement;
mod placement_file;
mod plan;
mod static_balancer;
mod statistics;
mod yaml_tree;

pub use dynamic_balancer::{DynamicBalancer, DynamicBalancerConfig};
/// The migration vocabulary lives in `moe-core` (the assembler applies plans); re-exported
/// here so callers of the planner need one import.
pub use moe_core::eplb::{MigrationPlan, RebalanceReport, SlotMove};
pub use placement::Placement;
pub use placement_file::{PlacementFile, load_placement_yaml, placement_yaml};
pub use plan::{
    Algorithm, PlanInput, PlanOutput, balancedness, default_assignment, gpu_loads, plan, plan_observed,
    validate_geometry, validate_load,
};
pub use static_balancer::StaticBalancer;
pub use statistics::{DEFAULT_DECAY, ExpertStatistics};
