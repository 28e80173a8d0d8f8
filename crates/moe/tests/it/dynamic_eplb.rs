//! Dynamic EPLB end to end over in-process ranks: a skewed router, rebalancing every
//! iteration, migrations of the slot weights between forwards, and the layer output equal to
//! the no-EPLB output before, during and after every migration.

use std::sync::Arc;

use moe::{ForwardOptions, create_moe};
use moe_comm::InProcessGroup;
use moe_core::*;

use crate::random::{Rng, expert_weights, quantized_weights, rank_layer};

const E: usize = 8;
const H: usize = 16;
const I: usize = 12;
const ITERS: usize = 5;

fn config() -> MoeConfig {
    config_with(QuantConfig::default(), H, I)
}

fn config_with(quant: QuantConfig, h: usize, i: usize) -> MoeConfig {
    let mut c = MoeConfig::new(E, h, i, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
    c.quant = quant;
    c
}

/// Logits that send most tokens to experts 2 and 3, which TensorRT-LLM's default slot table
/// does not replicate over these geometries (experts 0 and 1 it does), so ranks start skewed.
fn skewed_inputs(t: usize) -> (Tensor, Tensor) {
    skewed_inputs_h(t, H)
}

fn skewed_inputs_h(t: usize, h: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(9);
    let x = rng.tensor(DType::F32, vec![t, h], 1.0);
    let mut l = rng.tensor(DType::F32, vec![t, E], 1.0).to_f32_vec("l").unwrap();
    for row in l.chunks_mut(E) {
        row[2] += 4.0;
        row[3] += 3.0;
    }
    (x, Tensor::from_f32(vec![t, E], l).unwrap())
}

struct RankResult {
    outputs: Vec<Tensor>,
    reports: Vec<RebalanceReport>,
    migrated: usize,
}

fn run_world(ep: usize, slots: usize, list: Vec<usize>) -> Vec<RankResult> {
    let w = expert_weights(&mut Rng::new(3), E, H, I, DType::F32);
    run_world_with(config(), w, ep, slots, list)
}

fn run_world_with(base: MoeConfig, w: MemoryWeights, ep: usize, slots: usize, list: Vec<usize>) -> Vec<RankResult> {
    let total: usize = list.iter().sum();
    let (x, l) = skewed_inputs_h(total, base.hidden_size);
    let (x, l) = (Arc::new(x), Arc::new(l));
    let w = Arc::new(w);
    let base = Arc::new(base);
    let handles: Vec<_> = InProcessGroup::world(ep)
        .into_iter()
        .enumerate()
        .map(|(rank, g)| {
            let (x, l, w, list, base) = (x.clone(), l.clone(), w.clone(), list.clone(), base.clone());
            std::thread::spawn(move || -> Result<RankResult> {
                let mut c = base.as_ref().clone();
                c.parallel = ParallelConfig {
                    ep_size: ep,
                    ep_rank: rank,
                    tp_size: 1,
                    tp_rank: 0,
                    attention_dp: true,
                };
                c.eplb = Some(EplbConfig {
                    num_slots: slots,
                    layer_updates_per_iter: 1,
                    initial_global_assignments: None,
                });
                let mut layer = rank_layer(c, Arc::new(g), "alltoall", w.as_ref())?;
                let start: usize = list[..rank].iter().sum();
                let (xs, ls) = (x.narrow_rows(start, list[rank])?, l.narrow_rows(start, list[rank])?);
                let opts = ForwardOptions {
                    all_rank_num_tokens: Some(list.clone()),
                    use_dp_padding: false,
                };
                let mut outputs = Vec::new();
                for _ in 0..ITERS {
                    outputs.push(layer.forward_with(&xs, &ls, &opts)?);
                }
                Ok(RankResult {
                    outputs,
                    reports: layer.rebalance_reports().to_vec(),
                    migrated: layer.migrated_slots(),
                })
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread").expect("rank result"))
        .collect()
}

fn check(ep: usize, slots: usize, list: Vec<usize>) {
    let total: usize = list.iter().sum();
    let (x, l) = skewed_inputs(total);
    let mut plain = create_moe(config()).unwrap();
    plain
        .load_weights(&expert_weights(&mut Rng::new(3), E, H, I, DType::F32))
        .unwrap();
    let want = plain.forward(&x, &l).unwrap().to_f32_vec("want").unwrap();
    let ranks = run_world(ep, slots, list);
    for it in 0..ITERS {
        let got = Tensor::concat_rows(&ranks.iter().map(|r| r.outputs[it].clone()).collect::<Vec<_>>()).unwrap();
        let err = got
            .to_f32_vec("got")
            .unwrap()
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err < 1e-4,
            "ep {ep}, iteration {it}: max abs error {err} against the no-EPLB layer"
        );
    }
    let reports = &ranks[0].reports;
    assert!(!reports.is_empty(), "ep {ep}: the skewed load triggered a rebalance");
    let first = &reports[0];
    assert!(
        first.balancedness_after > first.balancedness_before,
        "ep {ep}: mean/max rank load improves: {} -> {}",
        first.balancedness_before,
        first.balancedness_after
    );
    assert!(
        ranks.iter().map(|r| r.migrated).sum::<usize>() > 0,
        "ep {ep}: slot weights were migrated"
    );
    for r in &ranks[1..] {
        assert_eq!(
            r.reports, *reports,
            "every rank plans the same placement from all-reduced statistics"
        );
    }
    println!(
        "ep {ep}: balancedness {:.3} -> {:.3}, {} slots changed, {} local slot copies",
        first.balancedness_before,
        first.balancedness_after,
        first.changed_slots,
        ranks.iter().map(|r| r.migrated).sum::<usize>()
    );
}

#[test]
fn skewed_routing_rebalances_over_two_and_four_ranks_without_changing_the_output() {
    check(2, 12, vec![40, 24]);
    check(4, 12, vec![16, 9, 20, 11]);
}

/// Every quant method whose experts may migrate: a migration that left any per-slot tensor
/// (codes, block scales, alphas, biases) behind would change the output of the migrated slots.
#[test]
fn every_migratable_quant_format_moves_all_its_per_expert_tensors() {
    let (h, i) = (128, 128);
    let formats = [
        QuantConfig {
            algo: QuantAlgo::Fp8Block,
            weight_block_size: Some([128, 128]),
            group_size: None,
        },
        QuantConfig {
            algo: QuantAlgo::Nvfp4,
            ..QuantConfig::default()
        },
        QuantConfig {
            algo: QuantAlgo::W4A16Mxfp4,
            ..QuantConfig::default()
        },
    ];
    for q in formats {
        let w = quantized_weights(&mut Rng::new(21), &q, (E, h, i), 0.5, [4.0, 4.0]);
        let list = vec![40, 24];
        let (x, l) = skewed_inputs_h(64, h);
        let mut plain = create_moe(config_with(q.clone(), h, i)).unwrap();
        plain.load_weights(&w).unwrap();
        let want = plain.forward(&x, &l).unwrap().to_f32_vec("want").unwrap();
        let ranks = run_world_with(config_with(q.clone(), h, i), w, 2, 12, list);
        assert!(
            ranks.iter().map(|r| r.migrated).sum::<usize>() > 0,
            "{:?}: a migration happened",
            q.algo
        );
        for it in 0..ITERS {
            let got = Tensor::concat_rows(&ranks.iter().map(|r| r.outputs[it].clone()).collect::<Vec<_>>()).unwrap();
            let err = got
                .to_f32_vec("got")
                .unwrap()
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 1e-3,
                "{:?} iteration {it}: max abs error {err} after migration",
                q.algo
            );
        }
    }
}
