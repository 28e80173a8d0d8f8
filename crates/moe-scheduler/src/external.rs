//! The external-communication scheduler (core spec §2.2-2.3): attention-DP padding, the
//! zero-token-rank guard, chunk counts every rank agrees on, empty-chunk substitution, and
//! truncation of the padding from the output.

use std::borrow::Cow;

use moe_core::{ForwardArgs, LayerView, MoeError, MoeScheduler, Result, SchedulerKind, Tensor};
use moe_kernels::ops;

use crate::chunk_body::{Chunk, forward_chunk};
use crate::chunking::{calculate_num_chunks, split_chunk};

/// Scheduler for backends whose exchange happens outside the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExternalCommScheduler;

impl MoeScheduler for ExternalCommScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::ExternalComm
    }

    fn forward(&self, mut layer: LayerView<'_>, args: ForwardArgs<'_>) -> Result<Tensor> {
        let config = layer.config;
        validate_inputs(&layer, &args)?;
        let rank = config.parallel.parallel_rank();
        let use_dp = config.parallel.attention_dp;
        let has_comm = layer.comm.strategy().is_some();

        // Token counts are borrowed too (the caller's list, or this rank's one count).
        let own_rows = [args.x.rows()];
        let original = token_list(&layer, &args, &own_rows)?;
        let max = original.iter().copied().max().unwrap_or(0);
        let mut use_dp_padding = args.use_dp_padding && use_dp;
        let mut list: Cow<'_, [usize]> = if use_dp_padding {
            Cow::Owned(vec![max; original.len()])
        } else {
            Cow::Borrowed(original)
        };
        let num_chunks = calculate_num_chunks(&list, use_dp && has_comm, config.moe_max_num_tokens)?;

        // The caller's tensors are borrowed; only attention-DP padding makes new ones.
        let mut x = Cow::Borrowed(args.x);
        let mut logits = Cow::Borrowed(args.router_logits);
        // Zero-token-rank guard: a rank with no tokens would skip the kernel and block its
        // peers inside the collective, so every rank pads to the max instead.
        if has_comm && use_dp && max > 0 && !use_dp_padding && list.contains(&0) {
            use_dp_padding = true;
            list = Cow::Owned(vec![max; list.len()]);
        }
        if use_dp_padding && x.rows() < max {
            x = Cow::Owned(ops::pad_rows(&x, max - x.rows())?);
            logits = Cow::Owned(ops::pad_rows(&logits, max - logits.rows())?);
        }

        layer.comm.determine_communication_method(&list, num_chunks)?;
        let enable_alltoall = layer.comm.strategy().is_some_and(|c| c.is_alltoall());

        let first_repeat = layer.repeat_idx == 0;
        let last_repeat = layer.repeat_idx + 1 == layer.repeat_count;
        let out = if num_chunks == 1 {
            forward_chunk(
                &mut layer,
                Chunk {
                    x: &x,
                    logits: &logits,
                    all_rank_num_tokens: &list,
                    use_dp_padding,
                    first: first_repeat,
                    last: last_repeat,
                    output_dtype: args.output_dtype,
                },
            )?
        } else {
            let plan = ChunkPlan::new(&list, rank, x.rows(), num_chunks, use_dp, enable_alltoall)?;
            let mut outputs = Vec::with_capacity(num_chunks);
            let mut offset = 0;
            let (x0, l0) = (
                ops::narrow_rows(&x, 0, plan.local_sizes[0])?,
                ops::narrow_rows(&logits, 0, plan.local_sizes[0])?,
            );
            for c in 0..num_chunks {
                let size = plan.local_sizes[c];
                let used = size > 0;
                // Chunk 0 is cut once and lent to every chunk that substitutes it.
                let (xc, lc) = if c > 0 && used {
                    (
                        Cow::Owned(ops::narrow_rows(&x, offset, size)?),
                        Cow::Owned(ops::narrow_rows(&logits, offset, size)?),
                    )
                } else {
                    // Chunk 0, or empty-chunk substitution: this rank still takes part in the
                    // chunk's collectives with chunk 0's rows and drops the result.
                    (Cow::Borrowed(&x0), Cow::Borrowed(&l0))
                };
                offset += size;
                let out = forward_chunk(
                    &mut layer,
                    Chunk {
                        x: &xc,
                        logits: &lc,
                        all_rank_num_tokens: &plan.lists[c],
                        use_dp_padding,
                        first: c == 0 && first_repeat,
                        last: c + 1 == num_chunks && last_repeat,
                        output_dtype: args.output_dtype,
                    },
                )?;
                if used {
                    outputs.push(out);
                }
            }
            ops::concat_rows(&outputs)?
        };

        let keep = original[if use_dp { rank } else { 0 }];
        if out.rows() > keep {
            ops::narrow_rows(&out, 0, keep)
        } else {
            Ok(out)
        }
    }
}

/// Per-chunk token lists of every rank and this rank's chunk sizes (core spec §2.3).
#[derive(Debug, PartialEq)]
struct ChunkPlan {
    lists: Vec<Vec<usize>>,
    local_sizes: Vec<usize>,
}

impl ChunkPlan {
    fn new(
        list: &[usize],
        rank: usize,
        local_rows: usize,
        num_chunks: usize,
        use_dp: bool,
        enable_alltoall: bool,
    ) -> Result<ChunkPlan> {
        if !use_dp {
            let local_sizes = split_chunk(local_rows, num_chunks);
            let lists = local_sizes.iter().map(|&s| vec![s]).collect();
            return Ok(ChunkPlan { lists, local_sizes });
        }
        let per_rank: Vec<Vec<usize>> = list.iter().map(|&n| split_chunk(n, num_chunks)).collect();
        let local_sizes = per_rank
            .get(rank)
            .cloned()
            .ok_or_else(|| MoeError::config("all_rank_num_tokens", format!("no entry for rank {rank}")))?;
        if local_sizes[0] == 0 {
            return Err(MoeError::config(
                "all_rank_num_tokens",
                format!("rank {rank} has no tokens in chunk 0; the zero-token guard should have padded it"),
            ));
        }
        let lists = (0..num_chunks)
            .map(|c| {
                per_rank
                    .iter()
                    .map(|sizes| {
                        // All ranks patch empty entries to that rank's chunk-0 size, so the
                        // size vectors agree everywhere (the rank substitutes chunk 0).
                        let s = if sizes[c] == 0 { sizes[0] } else { sizes[c] };
                        if enable_alltoall { s.max(1) } else { s }
                    })
                    .collect()
            })
            .collect();
        Ok(ChunkPlan { lists, local_sizes })
    }
}

/// Every rank's token count: the caller's list under attention-DP, else `own_rows` (this
/// rank's count, the one entry).
fn token_list<'a>(layer: &LayerView<'_>, args: &ForwardArgs<'a>, own_rows: &'a [usize; 1]) -> Result<&'a [usize]> {
    let p = &layer.config.parallel;
    let rows = args.x.rows();
    if !p.attention_dp {
        // Without attention-DP every rank sees the same tokens: there is one list entry.
        return Ok(own_rows);
    }
    let list = match args.all_rank_num_tokens {
        Some(l) => l,
        None if p.parallel_size() == 1 => own_rows,
        None => {
            return Err(MoeError::config(
                "all_rank_num_tokens",
                format!(
                    "attention-DP over {} ranks needs every rank's token count",
                    p.parallel_size()
                ),
            ));
        }
    };
    if list.len() != p.parallel_size() {
        return Err(MoeError::config(
            "all_rank_num_tokens",
            format!("{} entries for {} ranks", list.len(), p.parallel_size()),
        ));
    }
    let own = list[p.parallel_rank()];
    let max = list.iter().copied().max().unwrap_or(0);
    if rows != own && !(args.use_dp_padding && rows == max) {
        return Err(MoeError::shape(
            "x",
            format!("[{own}, H] (all_rank_num_tokens[{}])", p.parallel_rank()),
            args.x.shape(),
        ));
    }
    Ok(list)
}

fn validate_inputs(layer: &LayerView<'_>, args: &ForwardArgs<'_>) -> Result<()> {
    let c = layer.config;
    let x = args.x;
    if x.shape().len() != 2 || x.shape()[1] != c.hidden_size {
        return Err(MoeError::shape("x", format!("[T, {}]", c.hidden_size), x.shape()));
    }
    x.expect_dtype("x", c.dtype)?;
    let l = args.router_logits;
    if l.shape() != [x.rows(), c.num_experts] {
        return Err(MoeError::shape(
            "router_logits",
            format!("[{}, {}]", x.rows(), c.num_experts),
            l.shape(),
        ));
    }
    if !l.dtype().is_float_activation() {
        return Err(MoeError::DTypeMismatch {
            what: "router_logits".into(),
            expected: "f32, f16 or bf16".into(),
            actual: l.dtype().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_dp_plan_splits_local_rows() {
        let p = ChunkPlan::new(&[10], 0, 10, 3, false, false).unwrap();
        assert_eq!(p.local_sizes, vec![4, 3, 3]);
        assert_eq!(p.lists, vec![vec![4], vec![3], vec![3]]);
    }

    #[test]
    fn dp_plan_patches_empty_chunks_on_every_rank() {
        // Rank 1 has 1 token over 3 chunks: its chunks 1 and 2 are empty and substituted.
        let list = [5, 1];
        let p0 = ChunkPlan::new(&list, 0, 5, 3, true, false).unwrap();
        let p1 = ChunkPlan::new(&list, 1, 1, 3, true, false).unwrap();
        assert_eq!(p0.local_sizes, vec![2, 2, 1]);
        assert_eq!(p1.local_sizes, vec![1, 0, 0]);
        assert_eq!(p0.lists, vec![vec![2, 1], vec![2, 1], vec![1, 1]]);
        assert_eq!(p0.lists, p1.lists, "ranks must agree on every chunk's size vector");
    }

    #[test]
    fn dp_plan_refuses_an_empty_first_chunk() {
        assert!(ChunkPlan::new(&[4, 0], 1, 0, 2, true, false).is_err());
    }
}
