//! The layer over real MPI ranks (`mpirun -n N`): expert parallelism with every strategy and
//! the fused backend, attention-DP with uneven and empty ranks, chunking, and dynamic EPLB
//! with a skewed router (rebalance, slot migration, output unchanged). Every rank compares
//! its rows with a single-rank layer it builds itself; exits non-zero on any mismatch. Run by
//! `cargo xtask test` under `mpirun -n 2` and `-n 4`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use moe::{CreateOptions, ForwardOptions, LayerParts, create_moe, create_moe_with};
use moe_comm::MpiGroup;
use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::*;

const E: usize = 8;
const H: usize = 16;
const I: usize = 12;

/// Deterministic values in [-1, 1) from a counter hash, identical on every rank.
fn value(seed: u64, i: usize) -> f32 {
    let z = prng::mix64(seed.wrapping_mul(prng::GAMMA).wrapping_add(i as u64));
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn tensor(seed: u64, shape: Vec<usize>, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|i| value(seed, i) * scale).collect()).expect("tensor")
}

fn weights() -> MemoryWeights {
    let mut w = MemoryWeights::new();
    for e in 0..E as u64 {
        w.insert(
            expert_tensor_name(e as usize, Proj::W1, "weight"),
            tensor(100 + e, vec![I, H], 0.5),
        );
        w.insert(
            expert_tensor_name(e as usize, Proj::W3, "weight"),
            tensor(200 + e, vec![I, H], 0.5),
        );
        w.insert(
            expert_tensor_name(e as usize, Proj::W2, "weight"),
            tensor(300 + e, vec![H, I], 0.5),
        );
    }
    w
}

/// Inputs of all ranks; `hot` adds a bias to experts 2 and 3 (a skewed router).
fn inputs(t: usize, hot: bool) -> (Tensor, Tensor) {
    let x = tensor(1, vec![t, H], 1.0);
    let mut l = tensor(2, vec![t, E], 1.0).to_f32_vec("logits").expect("f32");
    if hot {
        l.chunks_mut(E).for_each(|r| {
            r[2] += 4.0;
            r[3] += 3.0;
        });
    }
    (x, Tensor::from_f32(vec![t, E], l).expect("logits"))
}

fn config(backend: Option<&str>, chunk: Option<usize>) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, DType::F32, RoutingMethod::Renormalize { top_k: 3 });
    c.backend = backend.map(str::to_owned);
    c.moe_max_num_tokens = chunk;
    c
}

struct Case<'a> {
    backend: Option<&'a str>,
    comm: &'a str,
    chunk: Option<usize>,
    eplb: Option<EplbConfig>,
    hot: bool,
    iterations: usize,
}

/// Runs one case on this rank; returns the largest deviation from the single-rank layer and
/// the layer (for EPLB reports).
fn run(g: &Arc<MpiGroup>, list: &[usize], case: &Case<'_>) -> Result<(f32, moe::ConfigurableMoe)> {
    let (rank, world) = (g.rank(), g.size());
    let total: usize = list.iter().sum();
    let (x, l) = inputs(total, case.hot);
    let w = weights();
    let mut single = create_moe(config(None, None))?;
    single.load_weights(&w)?;
    let want = single.forward(&x, &l)?;
    let start: usize = list[..rank].iter().sum();
    let want = want.narrow_rows(start, list[rank])?.to_f32_vec("want")?;

    let mut c = config(case.backend, case.chunk);
    c.parallel = ParallelConfig {
        ep_size: world,
        ep_rank: rank,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    c.eplb = case.eplb.clone();
    let parts = LayerParts {
        group: Some(g.clone() as Arc<dyn ProcessGroup>),
        comm_choice: case.comm.into(),
        comm_timeout: Duration::from_secs(30),
        ..LayerParts::default()
    };
    let mut layer = create_moe_with(
        c,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )?;
    layer.load_weights(&w)?;
    let (xs, ls) = (x.narrow_rows(start, list[rank])?, l.narrow_rows(start, list[rank])?);
    let opts = ForwardOptions {
        all_rank_num_tokens: Some(list.to_vec()),
        use_dp_padding: false,
    };
    let mut worst = 0.0f32;
    for _ in 0..case.iterations {
        let got = layer.forward_with(&xs, &ls, &opts)?.to_f32_vec("got")?;
        worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    Ok((worst, layer))
}

fn main() -> ExitCode {
    let g = match MpiGroup::init() {
        Ok(g) => Arc::new(g),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rank, world) = (g.rank(), g.size());
    // Uneven tokens, rank 1 empty.
    let list: Vec<usize> = (0..world).map(|r| if r == 1 { 0 } else { 3 + 2 * r }).collect();
    let mut failures = Vec::new();
    let cases = [
        ("allgather", None),
        ("alltoall", None),
        ("packed", None),
        ("auto", Some("cpu-fused")),
    ];
    for (comm, backend) in cases {
        for chunk in [None, Some(2)] {
            let case = Case {
                backend,
                comm,
                chunk,
                eplb: None,
                hot: false,
                iterations: 1,
            };
            match run(&g, &list, &case) {
                Ok((err, _)) if err < 1e-4 => {}
                Ok((err, _)) => failures.push(format!("{comm}/{backend:?}/chunk {chunk:?}: max abs error {err}")),
                Err(e) => failures.push(format!("{comm}/{backend:?}/chunk {chunk:?}: {e}")),
            }
        }
    }
    // Dynamic EPLB: 12 slots over the ranks, rebalanced every iteration.
    let eplb = Some(EplbConfig {
        num_slots: 12,
        layer_updates_per_iter: 1,
        initial_global_assignments: None,
    });
    let case = Case {
        backend: None,
        comm: "alltoall",
        chunk: Some(4),
        eplb,
        hot: true,
        iterations: 4,
    };
    let dense: Vec<usize> = (0..world).map(|r| 10 + 3 * r).collect();
    match run(&g, &dense, &case) {
        Ok((err, layer)) => {
            if err >= 1e-4 {
                failures.push(format!(
                    "dynamic eplb: max abs error {err} against the single-rank layer"
                ));
            }
            match layer.rebalance_reports().first() {
                Some(r) if r.balancedness_after > r.balancedness_before => println!(
                    "rank {rank}: eplb balancedness {:.3} -> {:.3}, {} slots changed, {} local slots migrated",
                    r.balancedness_before,
                    r.balancedness_after,
                    r.changed_slots,
                    layer.migrated_slots()
                ),
                other => failures.push(format!("dynamic eplb: no improving rebalance ({other:?})")),
            }
        }
        Err(e) => failures.push(format!("dynamic eplb: {e}")),
    }
    if failures.is_empty() {
        println!("rank {rank} of {world}: every strategy and dynamic EPLB match the single-rank layer");
        ExitCode::SUCCESS
    } else {
        eprintln!("rank {rank} of {world}:\n  {}", failures.join("\n  "));
        ExitCode::FAILURE
    }
}
