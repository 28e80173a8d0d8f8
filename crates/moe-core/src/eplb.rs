//! The per-layer load-balancer contract, called by schedulers in the order of TensorRT-LLM's
//! spec: wait GPU stage (first chunk), statistic, route, set CPU stage (last chunk).

use crate::error::Result;
use crate::tensor::Tensor;

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
}
