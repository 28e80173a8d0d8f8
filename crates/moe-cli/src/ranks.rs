//! `moe run --model ... --world N` and `mpirun -n N moe run --model ...`: the block spread
//! over expert-parallel ranks, each rank running a contiguous slice of the input rows
//! (attention-DP); rank 0 gathers the rows and writes `y`.
//!
//! In-process ranks are threads of this process; MPI ranks (feature `mpi`) are the processes
//! of `mpirun`, detected from the launcher's environment.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use moe::process_group::InProcessGroup;
use moe_core::{Deadline, EplbConfig, MoeError, ProcessGroup, Tensor};
use moe_hf::{BlockOptions, Distributed, MoeBlock};
use serde_json::json;

use crate::Summary;
use crate::eplb_cmd::record_stats;
use crate::model_run::ModelRun;
use crate::stats::Balance;
use crate::tensor_io::{read_tensor, write_tensor};

/// Where the ranks come from.
pub enum Ranks {
    /// `--world N` threads in this process.
    InProcess(usize),
    /// This process is one rank of an MPI job.
    Group(Arc<dyn ProcessGroup>),
}

/// The MPI world when this process was launched by `mpirun` and the binary has MPI.
pub fn mpi_world() -> anyhow::Result<Option<Arc<dyn ProcessGroup>>> {
    // Open MPI and PMIx-based launchers set these; a plain `moe run` stays single-process.
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return Ok(None);
    }
    mpi_group()
}

#[cfg(feature = "mpi")]
fn mpi_group() -> anyhow::Result<Option<Arc<dyn ProcessGroup>>> {
    let g = moe::process_group::MpiGroup::init().context("initializing MPI")?;
    Ok((g.size() > 1).then(|| Arc::new(g) as Arc<dyn ProcessGroup>))
}

#[cfg(not(feature = "mpi"))]
fn mpi_group() -> anyhow::Result<Option<Arc<dyn ProcessGroup>>> {
    anyhow::bail!("launched under an MPI launcher, but this `moe` was built without MPI (build with `--features mpi`)")
}

/// What every rank runs with.
pub struct RankOptions<'a> {
    /// Communication strategy (`auto` or a name of `moe::COMM_NAMES`).
    pub comm: &'a str,
    pub eplb: Option<EplbConfig>,
    /// Forwards to run (online EPLB rebalances between them).
    pub iterations: usize,
}

/// Contiguous row counts of `ranks` ranks over `t` rows (earlier ranks take the remainder).
pub fn split_rows(t: usize, ranks: usize) -> Vec<usize> {
    (0..ranks).map(|r| t / ranks + usize::from(r < t % ranks)).collect()
}

/// One rank's part of the run: load, slice, forward. Returns its output rows.
fn rank_forward(
    r: &ModelRun<'_>,
    layer: usize,
    x: &Tensor,
    counts: &[usize],
    dist: Distributed,
    iterations: usize,
) -> anyhow::Result<(Tensor, MoeBlock)> {
    let rank = dist.group.rank();
    let opts = BlockOptions {
        backend: r.backend.clone(),
        max_tokens_per_chunk: r.max_tokens_per_chunk,
        dtype: None,
        dequantize: r.dequantize,
    };
    let mut block = MoeBlock::load_distributed(r.dir, layer, opts, Some(dist))
        .with_context(|| format!("rank {rank}: loading layer {layer} of `{}`", r.dir.display()))?;
    let start: usize = counts[..rank].iter().sum();
    let xs = x.narrow_rows(start, counts[rank])?;
    let mut y = block
        .forward_with(&xs, Some(counts), false)
        .with_context(|| format!("rank {rank}: forward"))?;
    for it in 1..iterations {
        y = block
            .forward_with(&xs, Some(counts), false)
            .with_context(|| format!("rank {rank}: forward {it}"))?;
    }
    Ok((y, block))
}

/// The error to report of a failed multi-rank run: the first rank (in rank order) whose error
/// is not a communication error, since ranks that only saw a peer leave report that, not why it
/// left; the first error when every one is about communication.
fn first_cause(mut errors: Vec<anyhow::Error>) -> Option<anyhow::Error> {
    let is_comm = |e: &anyhow::Error| {
        e.chain()
            .any(|c| matches!(c.downcast_ref::<MoeError>(), Some(MoeError::Comm { .. })))
    };
    let at = errors.iter().position(|e| !is_comm(e)).unwrap_or(0);
    (!errors.is_empty()).then(|| errors.swap_remove(at))
}

/// Runs the block over `ranks`; prints (on rank 0 only) a summary of the gathered run.
pub fn run(r: &ModelRun<'_>, layer: usize, ranks: Ranks, o: &RankOptions<'_>) -> anyhow::Result<Option<Summary>> {
    let dist = |group: Arc<dyn ProcessGroup>| Distributed {
        group,
        comm: o.comm.to_string(),
        eplb: o.eplb.clone(),
    };
    let input = r
        .input
        .context("a multi-rank run needs --input (every rank reads its rows from it)")?;
    let x = read_tensor(input, r.input_key)?;
    // Once for all ranks (they read the same files), before any thread starts.
    let (finite_line, finite_json) = crate::model_run::check_weights(r, layer)?;
    let start = Instant::now();
    let (world, rank0_block, y) = match ranks {
        Ranks::InProcess(n) => {
            let counts = split_rows(x.rows(), n);
            let results: Vec<anyhow::Result<(Tensor, MoeBlock)>> = std::thread::scope(|s| {
                // A rank whose thread cannot start is an error of its own; the ranks that did
                // start then fail at their exchange deadline instead of waiting for it forever.
                let handles: Vec<_> = InProcessGroup::world(n)
                    .into_iter()
                    .enumerate()
                    .map(|(rank, g)| {
                        let d = dist(Arc::new(g));
                        let (x, counts) = (&x, &counts);
                        std::thread::Builder::new()
                            .name(format!("moe-rank-{rank}"))
                            .spawn_scoped(s, move || rank_forward(r, layer, x, counts, d, o.iterations))
                            .with_context(|| format!("starting the thread of rank {rank}"))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h?.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the rank's thread panicked")))
                    })
                    .collect()
            });
            let mut parts = Vec::new();
            let mut first = None;
            let mut errors = Vec::new();
            for res in results {
                match res {
                    Ok((y, block)) => {
                        parts.push(y);
                        first.get_or_insert(block);
                    }
                    Err(e) => errors.push(e),
                }
            }
            // Each rank's error already names its rank.
            if let Some(e) = first_cause(errors) {
                return Err(e);
            }
            let block = first.context("no ranks")?;
            (n, Some(block), Tensor::concat_rows(&parts)?)
        }
        Ranks::Group(g) => {
            let n = g.size();
            let counts = split_rows(x.rows(), n);
            let (y, block) = rank_forward(r, layer, &x, &counts, dist(g.clone()), o.iterations)?;
            let all = g
                .all_gather_v(&y, &counts, Deadline::after(std::time::Duration::from_secs(120)))
                .context("gathering the output rows on rank 0")?;
            (n, (g.rank() == 0).then_some(block), all)
        }
    };
    let wall = start.elapsed().as_secs_f64();
    let Some(block) = rank0_block else { return Ok(None) };
    if r.check_finite {
        crate::tensor_io::check_finite_output("the output y", &y)?;
    }
    if let Some(path) = r.output {
        write_tensor(path, "y", &y)?;
    }
    let mut recorded = String::new();
    if let Some(path) = r.record_stats {
        // The router is dense and replicated, so rank 0 can count the whole input's routing.
        let balance = Balance::from_logits(
            &block.config().routing,
            &block.router_logits(&x.to_dtype(block.dtype())?)?,
        )?;
        record_stats(path, &balance.per_expert)?;
        recorded = format!("recorded tokens per expert to {}\n", path.display());
    }
    let counts = split_rows(x.rows(), world);
    let mut text = format!(
        "moe run: {} layer {layer} of {} over {world} ranks (tokens per rank {counts:?})\n",
        block.family(),
        r.dir.display()
    );
    text.push_str(&finite_line);
    text.push_str(&block.report().to_string());
    text.push_str(&format!(
        "forward (load included): {} tokens x {} iteration(s) in {wall:.3} s\n",
        x.rows(),
        o.iterations
    ));
    let reports = block.routed().rebalance_reports();
    for rep in reports {
        text.push_str(&format!(
            "eplb layer {} iteration {}: balancedness (mean/max rank load) {:.4} -> {:.4}, {} slot(s) changed ({})\n",
            rep.layer_idx,
            rep.iteration,
            rep.balancedness_before,
            rep.balancedness_after,
            rep.changed_slots,
            rep.algorithm
        ));
    }
    if let Some(path) = r.output {
        text.push_str(&format!(
            "wrote y {:?} {} to {}\n",
            y.shape(),
            y.dtype(),
            path.display()
        ));
    }
    text.push_str(&recorded);
    let json = json!({
        "mode": "model",
        "model": r.dir.display().to_string(),
        "layer": layer,
        "world": world,
        "tokens_per_rank": counts,
        "backend": block.backend_name(),
        "report": block.report(),
        "wall_s": wall,
        "iterations": o.iterations,
        "finite_check": finite_json,
        "eplb": reports,
        "output": r.output.map(|p| p.display().to_string()),
    });
    Ok(Some(Summary { text, json }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_contiguously_with_the_remainder_first() {
        assert_eq!(split_rows(130, 4), vec![33, 33, 32, 32]);
        assert_eq!(split_rows(1, 3), vec![1, 0, 0]);
    }
}
