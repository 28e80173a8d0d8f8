//! The communication contracts: [`ProcessGroup`] (collectives with deadlines, implemented
//! in-process, over MPI and over NCCL by `moe-comm`) and [`Communication`] (a dispatch/combine
//! strategy over a process group). A peer that dies or stalls becomes `MoeError::Comm`
//! naming it, never a hang.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::tensor::Tensor;

/// The latest instant a collective may finish by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// Collectives over the ranks of one layer's communicator. Tensors are row-major; `counts`
/// are rows per rank.
pub trait ProcessGroup: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `inprocess`, `mpi`, `nccl`.
    fn kind(&self) -> &'static str;

    /// Concatenates every rank's rows (rank order); `counts[r]` rows come from rank r.
    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor>;
    /// [`ProcessGroup::all_gather_v`] of several tensors with the same row counts (a payload
    /// and its per-row metadata), as one collective where the engine can group them: NCCL runs
    /// them as one group (one launch, one completion wait). Outputs in input order.
    fn all_gather_v_many(&self, locals: &[&Tensor], counts: &[usize], deadline: Deadline) -> Result<Vec<Tensor>> {
        locals.iter().map(|t| self.all_gather_v(t, counts, deadline)).collect()
    }
    /// Sums `full` (`sum(counts)` rows) over ranks and returns this rank's `counts[rank]` rows.
    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor>;
    /// Sends `send_counts[r]` consecutive rows to rank r; receives `recv_counts[r]` from r.
    fn all_to_all_v(
        &self,
        send: &Tensor,
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Tensor>;
    /// [`ProcessGroup::all_to_all_v`] of several tensors with the same row counts (a payload
    /// and its per-row metadata), as one exchange where the engine can group them: NCCL runs
    /// them as one group (one launch, one completion wait). Outputs in input order.
    fn all_to_all_v_many(
        &self,
        sends: &[&Tensor],
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Vec<Tensor>> {
        sends
            .iter()
            .map(|t| self.all_to_all_v(t, send_counts, recv_counts, deadline))
            .collect()
    }
    /// Element-wise sum over ranks.
    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor>;
    /// Every rank's `value`, in rank order (token counts, chunk counts).
    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>>;
    fn barrier(&self, deadline: Deadline) -> Result<()>;
}

/// Everything that travels in a dispatch. `x` may borrow the caller's activations: a
/// strategy reads them to build what it sends, and one that sends nothing (tokens every rank
/// already holds) hands them back as they came, so a dispatch never copies them just to own
/// them.
#[derive(Clone, Debug)]
pub struct DispatchPayload<'a> {
    pub x: Cow<'a, Tensor>,
    pub x_sf: Option<Tensor>,
    /// Slot ids `[N, k]` i32.
    pub slots: Tensor,
    /// Routing weights `[N, k]` f32.
    pub scales: Option<Tensor>,
}

/// A dispatch/combine strategy.
pub trait Communication: Send {
    fn name(&self) -> &'static str;
    fn is_platform_supported(&self) -> bool;
    fn is_workload_feasible(&self, all_rank_num_tokens: &[usize], num_chunks: usize) -> bool;
    /// Whether quantized activations (and their scales) may travel instead of 16-bit ones.
    fn supports_post_quant_dispatch(&self) -> bool {
        true
    }
    /// True for all-to-all strategies (they cannot take all-zero ranks in a chunk).
    fn is_alltoall(&self) -> bool;
    /// True when the strategy gathers EPLB statistics itself during dispatch, so the
    /// balancer must only count locally (`ignore_allreduce`).
    fn gathers_eplb_statistics(&self) -> bool {
        false
    }
    fn prepare_dispatch(&mut self, _slots: &Tensor, _all_rank_num_tokens: &[usize]) -> Result<()> {
        Ok(())
    }
    fn dispatch<'a>(
        &mut self,
        payload: DispatchPayload<'a>,
        all_rank_num_tokens: &[usize],
        use_dp_padding: bool,
    ) -> Result<DispatchPayload<'a>>;
    /// Returns this rank's `[N_local, H]` rows, summed over the ranks that computed them.
    fn combine(&mut self, out: Tensor, all_rank_max_num_tokens: usize) -> Result<Tensor>;
    /// Collective teardown; all ranks call it together.
    fn destroy(&mut self) -> Result<()>;
}

/// The assembler-owned slot holding the layer's strategy. Schedulers reach the strategy only
/// through it, and replace it only through `determine_communication_method`.
pub trait CommHandle {
    fn strategy(&mut self) -> Option<&mut (dyn Communication + 'static)>;
    /// Replaces an infeasible all-to-all strategy with AllGather+ReduceScatter (logged and
    /// recorded by the assembler).
    fn determine_communication_method(&mut self, all_rank_num_tokens: &[usize], num_chunks: usize) -> Result<()>;
}

/// The handle of a layer without communication (a world of one).
#[derive(Debug, Default)]
pub struct NoComm;

impl CommHandle for NoComm {
    fn strategy(&mut self) -> Option<&mut (dyn Communication + 'static)> {
        None
    }

    fn determine_communication_method(&mut self, _: &[usize], _: usize) -> Result<()> {
        Ok(())
    }
}
