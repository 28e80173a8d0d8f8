//! The body every chunk runs through (core spec §2.2, per-chunk steps): EPLB wait stage,
//! routing, EPLB statistic and route, quantize/dispatch in the order the strategy allows,
//! `run_moe`, EPLB set stage around combine.

use std::borrow::Cow;

use moe_core::{CommPlan, DType, DispatchPayload, LayerView, MoeError, MoeRunContext, QuantizedInput, Result, Tensor};
use moe_kernels::ops;

/// One chunk's inputs as the scheduler prepared them.
pub(crate) struct Chunk<'a> {
    pub x: &'a Tensor,
    pub logits: &'a Tensor,
    /// Tokens of this chunk on every rank (a world of one: `[rows]`).
    pub all_rank_num_tokens: &'a [usize],
    pub use_dp_padding: bool,
    /// First chunk of the first repeat: EPLB waits for the previous migration here.
    pub first: bool,
    /// Last chunk of the last repeat: EPLB may start the next migration after it.
    pub last: bool,
    pub output_dtype: DType,
}

pub(crate) fn forward_chunk(layer: &mut LayerView<'_>, chunk: Chunk<'_>) -> Result<Tensor> {
    let config = layer.config;
    let rows = chunk.x.rows();
    let k = config.top_k();
    let dynamic = layer.balancer.as_deref().is_some_and(|b| b.is_dynamic());
    if dynamic
        && chunk.first
        && let Some(b) = layer.balancer.as_deref_mut()
    {
        b.start_wait_gpu_stage()?;
    }

    let routed = ops::route(&config.routing, chunk.logits)?;
    routed.ids.expect_shape("routing ids", &[rows, k])?;
    let mut scales = routed.weights;
    if let Some(s) = &scales {
        s.expect_shape("routing weights", &[rows, k])?;
    }
    let mut x: Cow<'_, Tensor> = Cow::Borrowed(chunk.x);
    if config.apply_router_weight_on_input {
        // Top-1 only (validated with the config): the weight scales the expert input and the
        // experts' outputs are summed unweighted.
        if let Some(w) = scales.take() {
            x = Cow::Owned(ops::scale_rows(chunk.x, &w)?);
        }
    }

    let ignore_allreduce = layer.comm.strategy().is_some_and(|c| c.gathers_eplb_statistics());
    let slots = match layer.balancer.as_deref_mut() {
        Some(b) => {
            if dynamic {
                if chunk.first {
                    b.done_wait_gpu_stage()?;
                }
                b.update_statistic(&routed.ids, chunk.first, chunk.last, ignore_allreduce)?;
            }
            b.route(&routed.ids, config.parallel.attention_dp)?
        }
        None => routed.ids,
    };

    let backend = layer.backend;
    // Owners of what the run inputs below borrow: the strategy's dispatched payload and the
    // backend's quantized activations (which borrow `x` where the format reads it as it is).
    let dispatched: DispatchPayload<'_>;
    let quantized: QuantizedInput<'_>;
    let (run_x, run_sf, run_slots, run_scales, plan) = match layer.comm.strategy() {
        Some(comm) => {
            comm.prepare_dispatch(&slots, chunk.all_rank_num_tokens)?;
            let post_quant = comm.supports_post_quant_dispatch();
            let plan = CommPlan {
                input_sf_swizzled: !post_quant,
                enable_alltoall: comm.is_alltoall(),
            };
            // The payload lends the strategy the activations (quantized, or `x` itself); the
            // strategy builds what it sends from them, or hands them back when it sends none.
            let p = if post_quant {
                let q = backend.quantize_input(&x)?;
                DispatchPayload {
                    x: q.x,
                    x_sf: q.x_sf,
                    slots,
                    scales,
                }
            } else {
                DispatchPayload {
                    x,
                    x_sf: None,
                    slots,
                    scales,
                }
            };
            dispatched = comm.dispatch(p, chunk.all_rank_num_tokens, chunk.use_dp_padding)?;
            let (x, x_sf) = if post_quant {
                (&*dispatched.x, dispatched.x_sf.as_ref())
            } else {
                quantized = backend.quantize_input(&dispatched.x)?;
                (&*quantized.x, quantized.x_sf.as_ref())
            };
            (x, x_sf, &dispatched.slots, dispatched.scales.as_ref(), plan)
        }
        None => {
            quantized = backend.quantize_input(&x)?;
            let plan = CommPlan {
                input_sf_swizzled: true,
                enable_alltoall: false,
            };
            (&*quantized.x, quantized.x_sf.as_ref(), &slots, scales.as_ref(), plan)
        }
    };

    let ctx = MoeRunContext {
        x: run_x,
        x_sf: run_sf,
        token_selected_slots: run_slots,
        token_final_scales: run_scales,
        output_dtype: chunk.output_dtype,
        all_rank_num_tokens: Some(chunk.all_rank_num_tokens),
        comm_plan: Some(plan),
    };
    let out = backend.run_moe(&ctx)?;
    if out.dtype() != chunk.output_dtype {
        return Err(MoeError::DTypeMismatch {
            what: format!("output of backend `{}`", backend.name()),
            expected: chunk.output_dtype.to_string(),
            actual: out.dtype().to_string(),
        });
    }

    if dynamic
        && chunk.last
        && let Some(b) = layer.balancer.as_deref_mut()
    {
        b.start_set_cpu_stage()?;
    }
    let max_tokens = chunk.all_rank_num_tokens.iter().copied().max().unwrap_or(0);
    let out = match layer.comm.strategy() {
        Some(comm) => comm.combine(out, max_tokens)?,
        None => out,
    };
    if dynamic
        && chunk.last
        && let Some(b) = layer.balancer.as_deref_mut()
    {
        b.done_set_cpu_stage()?;
    }
    Ok(out)
}
