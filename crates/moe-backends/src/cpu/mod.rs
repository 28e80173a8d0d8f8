//! The grouped CPU backend (`"cpu"`).
//!
//! `run_moe`:
//! 1. counting sort of the local `(token, k)` selections by slot ([`SlotPermutation`]);
//! 2. the rows of each slot are cut into (slot, row block) work items (`plan`);
//! 3. per item, in parallel on the caller's rayon pool: gather the rows' activations into a
//!    contiguous f32 tile, one GEMM for FC1 with bias and the activation fused right after,
//!    one GEMM for FC2 with bias, written to the item's rows of the permuted output;
//! 4. finalize: each token's rows weighted and summed back in token order.
//!
//! Buffers live in a workspace reused across calls (grown to the largest chunk seen, never
//! shrunk) and per-task tiles come from a scratch pool, so the steady-state forward
//! allocates only the output tensor (and the `gemm` crate's packing buffers). A call that
//! finds the workspace in use by a concurrent call works in a temporary one rather than
//! waiting for it (see `run_moe`).

mod plan;

use std::sync::{Mutex, TryLockError};

use moe_core::{
    Capabilities, DType, Eligibility, ExpertPartition, MoeBackend, MoeConfig, MoeDeployment, MoeProblem, MoeRunContext,
    Result, Tensor,
};
use moe_kernels::cpu::expert_mlp::{MlpScratch, expert_mlp};
use moe_kernels::cpu::finalize::weighted_sum_rows;
use moe_kernels::cpu::float_slice::FloatSlice;
use moe_kernels::cpu::permute::SlotPermutation;
use moe_kernels::cpu::scratch::ScratchPool;

use crate::capabilities::{check, host_capabilities};
use crate::inputs::{RunInputs, output_tensor};
use crate::lifecycle::{ExpertLayer, delegate_to_expert_layer};
use crate::views::LayerViews;
use plan::{WorkItem, plan};

/// Buffers of one `run_moe` call, kept across calls.
#[derive(Debug, Default)]
struct Workspace {
    perm: SlotPermutation,
    items: Vec<WorkItem>,
    /// Expert outputs in permuted row order, `[rows, H]`.
    rows_out: Vec<f32>,
    /// Token-order f32 sums before rounding to a 16-bit output dtype, `[N, H]`.
    tokens_out: Vec<f32>,
}

/// Per-task tiles.
#[derive(Debug, Default)]
struct TaskScratch {
    /// Gathered activations of the task's rows, `[len, H]` f32.
    x: Vec<f32>,
    mlp: MlpScratch,
}

/// What every task of one call reads.
struct TaskContext<'a> {
    perm: &'a SlotPermutation,
    x: FloatSlice<'a>,
    views: LayerViews<'a>,
    /// Workers each task's GEMMs may use.
    gemm_threads: usize,
    pool: &'a ScratchPool<TaskScratch>,
}

/// The grouped-GEMM CPU backend. See the module docs.
pub struct CpuBackend {
    layer: ExpertLayer,
    workspace: Mutex<Workspace>,
    pool: ScratchPool<TaskScratch>,
}

impl CpuBackend {
    pub const NAME: &'static str = "cpu";
}

/// Runs `items` (contiguous in row order) writing `out`, the permuted output rows starting
/// at the first item's row. Splits in halves with `rayon::join`, handing each half its own
/// part of `out`, so tasks write disjoint rows without locks or `unsafe`.
fn run_items(items: &[WorkItem], out: &mut [f32], cx: &TaskContext<'_>) -> Result<()> {
    match items {
        [] => Ok(()),
        [item] => run_item(item, out, cx),
        _ => {
            let mid = items.len() / 2;
            let split = (items[mid].start - items[0].start) * cx.views.dims.hidden;
            let (left, right) = out.split_at_mut(split);
            let (a, b) = rayon::join(
                || run_items(&items[..mid], left, cx),
                || run_items(&items[mid..], right, cx),
            );
            a.and(b)
        }
    }
}

fn run_item(item: &WorkItem, out: &mut [f32], cx: &TaskContext<'_>) -> Result<()> {
    let h = cx.views.dims.hidden;
    let mut scratch = cx.pool.take();
    let TaskScratch { x, mlp } = &mut *scratch;
    x.resize(item.len * h, 0.0);
    cx.perm.gather_rows(cx.x, h, item.start..item.start + item.len, x)?;
    let weights = cx.views.slot(item.slot)?;
    expert_mlp(
        x,
        item.len,
        &weights,
        cx.views.dims,
        &mut out[..item.len * h],
        mlp,
        cx.gemm_threads,
    )
}

impl MoeBackend for CpuBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_implement(problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility {
        check(Self::NAME, &host_capabilities(), problem, deployment)
    }

    fn declared_capabilities() -> Capabilities {
        host_capabilities()
    }

    fn create(config: &MoeConfig, partition: ExpertPartition) -> Result<Self> {
        let layer = ExpertLayer::new(Self::NAME, &host_capabilities(), config, partition)?;
        Ok(CpuBackend {
            layer,
            workspace: Mutex::new(Workspace::default()),
            pool: ScratchPool::new(),
        })
    }

    fn capabilities(&self) -> Capabilities {
        host_capabilities()
    }

    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor> {
        self.layer.ensure_ready()?;
        let mut decoded = None;
        let inp = RunInputs::parse(ctx, &self.layer, &mut decoded)?;
        let views = LayerViews::new(&self.layer);
        let (n, k, h) = (inp.num_tokens, inp.top_k, views.dims.hidden);
        let p = &self.layer.partition;

        // Never block on the workspace: a rayon worker waiting inside another call's join
        // may pick up this call on the same thread, and blocking would deadlock it. A busy
        // workspace means concurrent calls, which get a temporary one. A poisoned lock only
        // means an earlier call panicked; the workspace holds nothing but scratch.
        let (mut guard, mut temporary);
        let ws: &mut Workspace = match self.workspace.try_lock() {
            Ok(g) => {
                guard = g;
                &mut guard
            }
            Err(TryLockError::Poisoned(p)) => {
                guard = p.into_inner();
                &mut guard
            }
            Err(TryLockError::WouldBlock) => {
                temporary = Workspace::default();
                &mut temporary
            }
        };
        ws.perm.compute(inp.slots, k, p.num_slots, p.slot_start..p.slot_end)?;
        let gemm_threads = plan(&ws.perm, rayon::current_num_threads(), &mut ws.items);
        ws.rows_out.resize(ws.perm.num_rows() * h, 0.0);
        let cx = TaskContext {
            perm: &ws.perm,
            x: inp.x,
            views,
            gemm_threads,
            pool: &self.pool,
        };
        run_items(&ws.items, &mut ws.rows_out, &cx)?;

        let row_of_pair = ws.perm.row_of_pair();
        if inp.output_dtype == DType::F32 {
            let mut out = vec![0.0f32; n * h];
            weighted_sum_rows(&mut out, h, k, row_of_pair, &ws.rows_out, inp.scales)?;
            output_tensor(DType::F32, n, h, out)
        } else {
            ws.tokens_out.resize(n * h, 0.0);
            weighted_sum_rows(&mut ws.tokens_out, h, k, row_of_pair, &ws.rows_out, inp.scales)?;
            Tensor::from_f32_as(inp.output_dtype, vec![n, h], &ws.tokens_out)
        }
    }

    delegate_to_expert_layer!();
}
