//! The fused-communication scheduler (core spec §2.5): for backends whose kernel owns the
//! cross-rank exchange. It strips attention-DP padding before splitting, agrees the chunk
//! count from real token counts, launches every chunk on every rank (zero-token chunks
//! included, since the kernel's exchange needs every rank), never dispatches or combines on
//! the host, and moves the EPLB set-CPU stage after the kernel so a migration never races it.

use std::borrow::Cow;

use moe_core::{DType, ForwardArgs, LayerView, MoeError, MoeRunContext, MoeScheduler, Result, SchedulerKind, Tensor};
use moe_kernels::ops;

use crate::chunking::split_chunk;

/// Scheduler for `SchedulerKind::FusedComm` backends.
#[derive(Clone, Copy, Debug, Default)]
pub struct FusedCommScheduler;

impl MoeScheduler for FusedCommScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::FusedComm
    }

    fn forward(&self, mut layer: LayerView<'_>, args: ForwardArgs<'_>) -> Result<Tensor> {
        let config = layer.config;
        if !args.x.dtype().is_float_activation() {
            return Err(MoeError::DTypeMismatch {
                what: "x".into(),
                expected: "f32, f16 or bf16 (the fused backend quantizes itself)".into(),
                actual: args.x.dtype().to_string(),
            });
        }
        let ep_rank = config.parallel.ep_rank;
        let had_meta = args.all_rank_num_tokens.is_some();
        let own_rows = [args.x.rows()];
        let real: &[usize] = args.all_rank_num_tokens.unwrap_or(&own_rows);
        let own = if had_meta { ep_rank } else { 0 };
        let real_local = *real
            .get(own)
            .ok_or_else(|| MoeError::config("all_rank_num_tokens", format!("no entry for EP rank {ep_rank}")))?;
        if real_local > args.x.rows() {
            return Err(MoeError::shape(
                "x",
                format!("at least {real_local} rows"),
                args.x.shape(),
            ));
        }
        // Padding rows are dropped before splitting: the kernel exchanges real tokens only.
        // Unpadded inputs are borrowed as they are.
        let (x, logits) = if real_local == args.x.rows() {
            (Cow::Borrowed(args.x), Cow::Borrowed(args.router_logits))
        } else {
            (
                Cow::Owned(ops::narrow_rows(args.x, 0, real_local)?),
                Cow::Owned(ops::narrow_rows(args.router_logits, 0, real_local)?),
            )
        };
        let max = real.iter().copied().max().unwrap_or(0);
        let num_chunks = match config.moe_max_num_tokens {
            Some(0) => return Err(MoeError::config("moe_max_num_tokens", "must be at least 1")),
            Some(m) => max.div_ceil(m).max(1),
            None => 1,
        };
        let first_repeat = layer.repeat_idx == 0;
        let last_repeat = layer.repeat_idx + 1 == layer.repeat_count;
        if num_chunks == 1 {
            // One chunk: the (unpadded) input is lent as it is, its token counts are the
            // real ones, and its output is the layer's.
            return fused_chunk(
                &mut layer,
                &x,
                &logits,
                had_meta.then_some(real),
                first_repeat,
                last_repeat,
                args.output_dtype,
            );
        }
        let per_rank: Vec<Vec<usize>> = real.iter().map(|&n| split_chunk(n, num_chunks)).collect();
        let mut outputs = Vec::with_capacity(num_chunks);
        let mut offset = 0;
        for c in 0..num_chunks {
            let size = per_rank[own][c];
            let xc = ops::narrow_rows(&x, offset, size)?;
            let lc = ops::narrow_rows(&logits, offset, size)?;
            offset += size;
            let list: Option<Vec<usize>> = had_meta.then(|| per_rank.iter().map(|s| s[c]).collect());
            let out = fused_chunk(
                &mut layer,
                &xc,
                &lc,
                list.as_deref(),
                c == 0 && first_repeat,
                c + 1 == num_chunks && last_repeat,
                args.output_dtype,
            )?;
            outputs.push(out);
        }
        ops::concat_rows(&outputs)
    }
}

fn fused_chunk(
    layer: &mut LayerView<'_>,
    x: &Tensor,
    logits: &Tensor,
    list: Option<&[usize]>,
    first: bool,
    last: bool,
    output_dtype: DType,
) -> Result<Tensor> {
    let config = layer.config;
    let k = config.top_k();
    let dynamic = layer.balancer.as_deref().is_some_and(|b| b.is_dynamic());
    if config.apply_router_weight_on_input {
        return Err(MoeError::config(
            "apply_router_weight_on_input",
            "fused-communication backends apply routing weights in the kernel",
        ));
    }
    if let (true, Some(b)) = (dynamic && first, layer.balancer.as_deref_mut()) {
        b.start_wait_gpu_stage()?;
    }
    let (ids, scales) = if x.rows() > 0 {
        let r = ops::route(&config.routing, logits)?;
        (r.ids, r.weights)
    } else {
        (
            Tensor::zeros(DType::I32, vec![0, k]),
            Some(Tensor::zeros(DType::F32, vec![0, k])),
        )
    };
    let slots = match layer.balancer.as_deref_mut() {
        Some(b) => {
            if dynamic {
                if first {
                    b.done_wait_gpu_stage()?;
                }
                // The kernel's exchange does not gather statistics, so the balancer reduces them.
                b.update_statistic(&ids, first, last, false)?;
            }
            b.route(&ids, config.parallel.attention_dp)?
        }
        None => ids,
    };
    let q = layer.backend.quantize_input(x)?;
    let ctx = MoeRunContext {
        x: &q.x,
        x_sf: q.x_sf.as_ref(),
        token_selected_slots: &slots,
        token_final_scales: scales.as_ref(),
        output_dtype,
        all_rank_num_tokens: list,
        comm_plan: None,
    };
    let out = layer.backend.run_moe(&ctx)?;
    if dynamic
        && last
        && let Some(b) = layer.balancer.as_deref_mut()
    {
        b.start_set_cpu_stage()?;
        b.done_set_cpu_stage()?;
    }
    Ok(out)
}
