//! The scheduler contract: forward-time policy (padding, chunking, dispatch/quantize order,
//! EPLB hook order) over a read-only view of the assembled layer.

use crate::backend::MoeBackend;
use crate::comm::CommHandle;
use crate::config::MoeConfig;
use crate::dtype::DType;
use crate::eplb::LoadBalancer;
use crate::error::Result;
use crate::problem::SchedulerKind;
use crate::tensor::Tensor;

/// Inputs of one layer call.
#[derive(Clone, Copy, Debug)]
pub struct ForwardArgs<'a> {
    /// This rank's activations `[T, H]`.
    pub x: &'a Tensor,
    /// Router logits `[T, E]`.
    pub router_logits: &'a Tensor,
    pub output_dtype: DType,
    /// Tokens on every rank (attention-DP); `None` = `[x.rows]`.
    pub all_rank_num_tokens: Option<&'a [usize]>,
    pub use_dp_padding: bool,
}

/// What a scheduler may see of the assembled layer. It reads `repeat_idx`, never writes it,
/// and reaches communication only through the assembler's [`CommHandle`].
pub struct LayerView<'a> {
    pub config: &'a MoeConfig,
    pub backend: &'a dyn MoeBackend,
    pub comm: &'a mut dyn CommHandle,
    pub balancer: Option<&'a mut dyn LoadBalancer>,
    pub repeat_idx: usize,
    pub repeat_count: usize,
}

/// A forward-execution strategy.
pub trait MoeScheduler: Send + Sync {
    fn kind(&self) -> SchedulerKind;
    fn forward(&self, layer: LayerView<'_>, args: ForwardArgs<'_>) -> Result<Tensor>;
}
