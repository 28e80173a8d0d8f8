//! The HF blocks over in-process ranks: experts spread over EP = 2, 3 and 4 ranks with every
//! strategy and the fused backend, each rank holding a contiguous slice of the tokens
//! (attention-DP, with and without padding, chunked and not), give the single-rank output.

use std::sync::Arc;

use moe::process_group::InProcessGroup;
use moe_core::{ProcessGroup, Tensor};
use moe_hf::{BlockOptions, Distributed, MoeBlock};

use crate::common::{FAMILIES, fixture, io_tensor, rel_l2};

/// Rows per rank: contiguous, uneven, one rank empty when there are 3 or more.
fn split(t: usize, ranks: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = (0..ranks)
        .map(|r| if r == 1 && ranks > 2 { 0 } else { t / ranks })
        .collect();
    let assigned: usize = counts.iter().sum();
    counts[0] += t - assigned;
    counts
}

fn run_ranks(
    name: &str,
    x: &Tensor,
    ranks: usize,
    backend: &str,
    comm: &str,
    chunk: Option<usize>,
    pad: bool,
) -> Tensor {
    let counts = split(x.rows(), ranks);
    let dir = fixture(name);
    let x = Arc::new(x.clone());
    let handles: Vec<_> = InProcessGroup::world(ranks)
        .into_iter()
        .enumerate()
        .map(|(rank, g)| {
            let (dir, x, counts) = (dir.clone(), x.clone(), counts.clone());
            let (backend, comm) = (backend.to_string(), comm.to_string());
            std::thread::spawn(move || {
                let opts = BlockOptions {
                    backend: Some(backend),
                    max_tokens_per_chunk: chunk,
                    ..BlockOptions::default()
                };
                let dist = Distributed {
                    group: Arc::new(g) as Arc<dyn ProcessGroup>,
                    comm,
                    eplb: None,
                };
                let mut block = MoeBlock::load_distributed(&dir, 0, opts, Some(dist)).expect("load rank");
                let start: usize = counts[..rank].iter().sum();
                let xs = x.narrow_rows(start, counts[rank]).expect("slice");
                block.forward_with(&xs, Some(&counts), pad).expect("rank forward")
            })
        })
        .collect();
    let parts: Vec<Tensor> = handles.into_iter().map(|h| h.join().expect("rank thread")).collect();
    Tensor::concat_rows(&parts).expect("gather")
}

#[test]
fn every_family_over_expert_parallel_ranks_matches_one_rank() {
    let setups = [
        (2, "cpu", "allgather", None, false),
        (2, "cpu", "alltoall", Some(16), true),
        (4, "cpu", "alltoall", None, false),
        (4, "reference", "packed", Some(16), false),
        (3, "cpu", "packed", None, true),
        (4, "cpu-fused", "auto", Some(16), false),
    ];
    for family in FAMILIES {
        for dtype in ["float32", "bfloat16"] {
            let name = format!("{family}-{dtype}");
            let x = io_tensor(&fixture(&name), "x_130");
            let mut single = MoeBlock::load(fixture(&name), 0, BlockOptions::default()).expect("load");
            let want = single.forward(&x).expect("single rank");
            // f32: summation order only; bf16: the output is rounded to bf16, and a different
            // summation order can flip that rounding by one ulp (2^-8 relative).
            let tol = if dtype == "float32" { 1e-5 } else { 1e-2 };
            for (ranks, backend, comm, chunk, pad) in setups {
                let got = run_ranks(&name, &x, ranks, backend, comm, chunk, pad);
                let err = rel_l2(&got, &want);
                assert!(
                    err <= tol,
                    "{name} ep={ranks} {backend}/{comm} chunk={chunk:?} pad={pad}: rel L2 {err:.2e}"
                );
                // The oracle too, as a guard that splitting changed nothing material.
                let y = io_tensor(&fixture(&name), "y_130");
                let oracle = if dtype == "float32" { 1e-5 } else { 3e-2 };
                assert!(rel_l2(&got, &y) <= oracle, "{name} ep={ranks}: against transformers");
            }
        }
    }
}
