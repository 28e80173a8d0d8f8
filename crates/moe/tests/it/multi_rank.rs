//! Multi-rank layers over in-process ranks give the single-rank output: every strategy, EP
//! sizes 2, 3 (non-divisible) and 4, MoE-TP, attention-DP with and without padding, chunking,
//! ranks without tokens, and a rank that dies before the collective.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moe::{CreateOptions, ForwardOptions, LayerParts, create_moe, create_moe_with};
use moe_comm::InProcessGroup;
use moe_core::*;

use crate::random::{Rng, expert_weights, rank_layer};

const E: usize = 8;
const H: usize = 16;
const I: usize = 12;

fn base_config(chunk: Option<usize>) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, DType::F32, RoutingMethod::Renormalize { top_k: 3 });
    c.moe_max_num_tokens = chunk;
    c
}

fn weights() -> MemoryWeights {
    expert_weights(&mut Rng::new(11), E, H, I, DType::F32)
}

fn inputs(t: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(5);
    (
        rng.tensor(DType::F32, vec![t, H], 1.0),
        rng.tensor(DType::F32, vec![t, E], 3.0),
    )
}

fn single_rank(t: usize) -> Tensor {
    let (x, l) = inputs(t);
    let mut layer = create_moe(base_config(None)).unwrap();
    layer.load_weights(&weights()).unwrap();
    layer.forward(&x, &l).unwrap()
}

/// One world run: `ep x tp` ranks; with attention-DP rank r gets `list[r]` consecutive rows,
/// otherwise every rank gets all rows. Returns every rank's output.
struct World {
    backend: Option<&'static str>,
    ep: usize,
    tp: usize,
    dp: bool,
    comm: &'static str,
    chunk: Option<usize>,
    pad: bool,
}

impl World {
    fn run(&self, list: &[usize]) -> Vec<Result<Tensor>> {
        let total: usize = if self.dp { list.iter().sum() } else { list[0] };
        let (x, l) = inputs(total);
        let (x, l, w) = (Arc::new(x), Arc::new(l), Arc::new(weights()));
        let world = self.ep * self.tp;
        let groups = InProcessGroup::world(world);
        let handles: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(rank, g)| {
                let (x, l, w) = (x.clone(), l.clone(), w.clone());
                let list = list.to_vec();
                let (ep, tp, dp, comm, chunk, pad) = (self.ep, self.tp, self.dp, self.comm, self.chunk, self.pad);
                let backend = self.backend;
                std::thread::spawn(move || -> Result<Tensor> {
                    let mut c = base_config(chunk);
                    c.backend = backend.map(str::to_owned);
                    c.parallel = ParallelConfig {
                        ep_size: ep,
                        ep_rank: rank / tp,
                        tp_size: tp,
                        tp_rank: rank % tp,
                        attention_dp: dp,
                    };
                    let mut layer = rank_layer(c, Arc::new(g), comm, w.as_ref())?;
                    let (start, rows) = if dp {
                        (list[..rank].iter().sum(), list[rank])
                    } else {
                        (0, list[0])
                    };
                    let xs = x.narrow_rows(start, rows)?;
                    let ls = l.narrow_rows(start, rows)?;
                    let opts = ForwardOptions {
                        all_rank_num_tokens: dp.then(|| list.clone()),
                        use_dp_padding: pad,
                    };
                    layer.forward_with(&xs, &ls, &opts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    }

    fn check(&self, list: &[usize]) {
        let outs: Vec<Tensor> = self.run(list).into_iter().map(|r| r.unwrap()).collect();
        let total: usize = if self.dp { list.iter().sum() } else { list[0] };
        let reference = single_rank(total);
        let got = if self.dp {
            Tensor::concat_rows(&outs).unwrap()
        } else {
            for o in &outs[1..] {
                assert_eq!(
                    o.to_f32_vec("o").unwrap(),
                    outs[0].to_f32_vec("o").unwrap(),
                    "replicated ranks agree"
                );
            }
            outs[0].clone()
        };
        let (a, b) = (got.to_f32_vec("got").unwrap(), reference.to_f32_vec("ref").unwrap());
        assert_eq!(a.len(), b.len(), "{self:?} {list:?}");
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{self:?} list {list:?}: max abs error {err}");
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend={:?} ep={} tp={} dp={} comm={} chunk={:?} pad={}",
            self.backend, self.ep, self.tp, self.dp, self.comm, self.chunk, self.pad
        )
    }
}

#[test]
fn expert_parallel_matches_single_rank_for_every_strategy() {
    for comm in ["allgather", "alltoall", "packed", "auto"] {
        for (ep, list) in [(2, vec![5, 3]), (3, vec![4, 1, 6]), (4, vec![2, 7, 1, 3])] {
            for chunk in [None, Some(2)] {
                for pad in [false, true] {
                    World {
                        backend: None,
                        ep,
                        tp: 1,
                        dp: true,
                        comm,
                        chunk,
                        pad,
                    }
                    .check(&list);
                }
            }
        }
    }
}

#[test]
fn ranks_without_tokens_still_take_part() {
    for comm in ["allgather", "alltoall", "packed"] {
        World {
            backend: None,
            ep: 2,
            tp: 1,
            dp: true,
            comm,
            chunk: None,
            pad: false,
        }
        .check(&[4, 0]);
        World {
            backend: None,
            ep: 4,
            tp: 1,
            dp: true,
            comm,
            chunk: Some(1),
            pad: false,
        }
        .check(&[0, 3, 0, 2]);
        World {
            backend: None,
            ep: 3,
            tp: 1,
            dp: true,
            comm,
            chunk: Some(2),
            pad: false,
        }
        .check(&[0, 0, 0]);
    }
}

#[test]
fn tensor_parallel_and_replicated_tokens() {
    // MoE-TP alone, EP x TP, and EP without attention-DP (every rank holds all tokens).
    World {
        backend: None,
        ep: 1,
        tp: 2,
        dp: false,
        comm: "auto",
        chunk: None,
        pad: false,
    }
    .check(&[6]);
    World {
        backend: None,
        ep: 2,
        tp: 2,
        dp: true,
        comm: "allgather",
        chunk: Some(3),
        pad: false,
    }
    .check(&[3, 2, 0, 4]);
    World {
        backend: None,
        ep: 2,
        tp: 2,
        dp: true,
        comm: "packed",
        chunk: None,
        pad: true,
    }
    .check(&[1, 2, 3, 4]);
    World {
        backend: None,
        ep: 4,
        tp: 1,
        dp: false,
        comm: "auto",
        chunk: Some(4),
        pad: false,
    }
    .check(&[9]);
}

#[test]
fn alltoall_is_refused_where_it_cannot_work() {
    let g = InProcessGroup::world(2).into_iter().next().unwrap();
    let mut c = base_config(None);
    c.parallel = ParallelConfig {
        ep_size: 2,
        ep_rank: 0,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: false,
    };
    let parts = LayerParts {
        group: Some(Arc::new(g)),
        comm_choice: "alltoall".into(),
        ..LayerParts::default()
    };
    let err = create_moe_with(
        c,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, MoeError::InvalidConfig { field, .. } if field == "comm"),
        "{err}"
    );
}

/// The resolution report of rank 0 of an `ep`-rank attention-DP layer with `comm: auto`.
fn auto_report(ep: usize, chunk: Option<usize>) -> ResolutionReport {
    let mut c = base_config(chunk);
    c.parallel = ParallelConfig {
        ep_size: ep,
        ep_rank: 0,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    let g0 = InProcessGroup::world(ep).into_iter().next().unwrap();
    let parts = LayerParts {
        group: Some(Arc::new(g0)),
        ..LayerParts::default()
    };
    let layer = create_moe_with(
        c,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    layer.report().clone()
}

#[test]
fn auto_selection_is_reported() {
    let report = auto_report(2, Some(64));
    let sel = report.comm.clone().unwrap();
    assert_eq!(
        sel.chosen.as_deref(),
        Some("packed"),
        "64-token chunks over 2 ranks fit the packed budget"
    );
    assert!(report.to_string().contains("comm: packed (requested: auto)"));
}

#[test]
fn auto_prefers_allgather_where_every_rank_would_receive_nearly_every_token() {
    // Top-3 of 8 experts: over 2 ranks a rank receives 1 - C(4,3)/C(8,3) = 93% of the
    // other's tokens (all-gather); over 4 ranks 1 - C(6,3)/C(8,3) = 64% (all-to-all).
    for (ep, want) in [(2, "allgather"), (4, "alltoall")] {
        let report = auto_report(ep, None);
        let sel = report.comm.clone().unwrap();
        assert_eq!(sel.chosen.as_deref(), Some(want), "ep {ep}");
        let passed: Vec<&str> = sel.passed_over.iter().map(|(n, _)| n.as_str()).collect();
        if want == "allgather" {
            assert_eq!(passed, ["packed", "alltoall"], "ep {ep}");
            assert!(sel.passed_over[1].1.contains("92.9%"), "{:?}", sel.passed_over);
            assert!(
                report.to_string().contains("comm: allgather (requested: auto)"),
                "{report}"
            );
        } else {
            assert_eq!(passed, ["packed"], "ep {ep}");
        }
    }
}

#[test]
fn a_rank_that_dies_turns_into_an_error_naming_it_within_the_deadline() {
    let mut groups = InProcessGroup::world(2);
    let dead = groups.pop().unwrap();
    let g0 = groups.pop().unwrap();
    let mut c = base_config(None);
    c.parallel = ParallelConfig {
        ep_size: 2,
        ep_rank: 0,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    let parts = LayerParts {
        group: Some(Arc::new(g0)),
        comm_choice: "allgather".into(),
        comm_timeout: Duration::from_secs(5),
        ..LayerParts::default()
    };
    let mut layer = create_moe_with(
        c,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )
    .unwrap();
    layer.load_weights(&weights()).unwrap();
    // Rank 1 goes away mid-run: its thread ends while rank 0 is inside the forward.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(dead);
    });
    let (x, l) = inputs(3);
    let start = Instant::now();
    let err = layer
        .forward_with(
            &x,
            &l,
            &ForwardOptions {
                all_rank_num_tokens: Some(vec![3, 2]),
                use_dp_padding: false,
            },
        )
        .unwrap_err();
    killer.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the error came before the deadline"
    );
    assert!(matches!(err, MoeError::Comm { peer: Some(1), .. }), "{err}");
}

#[test]
fn fused_backend_owns_the_exchange_and_matches_single_rank() {
    let fused = Some("cpu-fused");
    for (ep, list) in [(2, vec![5, 3]), (3, vec![4, 0, 6]), (4, vec![0, 7, 1, 0])] {
        for chunk in [None, Some(2)] {
            World {
                backend: fused,
                ep,
                tp: 1,
                dp: true,
                comm: "auto",
                chunk,
                pad: false,
            }
            .check(&list);
            World {
                backend: fused,
                ep,
                tp: 1,
                dp: true,
                comm: "auto",
                chunk,
                pad: true,
            }
            .check(&list);
        }
    }
    World {
        backend: fused,
        ep: 2,
        tp: 1,
        dp: true,
        comm: "auto",
        chunk: Some(1),
        pad: false,
    }
    .check(&[0, 0]);
    World {
        backend: fused,
        ep: 2,
        tp: 1,
        dp: false,
        comm: "auto",
        chunk: Some(3),
        pad: false,
    }
    .check(&[5]);
}

#[test]
fn fused_backend_declines_what_its_kernel_cannot_do_and_the_report_says_so() {
    let mut c = MoeConfig::new(E, H, I, DType::F32, RoutingMethod::Llama4 { top_k: 1 });
    c.apply_router_weight_on_input = true;
    c.backend = Some("cpu-fused".into());
    let report = moe::resolve_moe_impl(&c, &moe::probe_environment()).unwrap();
    assert_eq!(report.winner.as_deref(), Some("cpu"));
    assert!(report.degraded());
    assert_eq!(report.rejected[0].backend, "cpu-fused");
    assert_eq!(report.rejected[0].reason, RejectReason::RoutingUnsupported);
}
