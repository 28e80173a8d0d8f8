//! The matrix itself: its data is well-formed (every routing method present, every config
//! valid, ids unique, names in sync with check-boundaries), the naive oracle computes what
//! the math says, and every cell passes or is skipped by its backend's `can_implement`.

use std::collections::HashSet;

use moe_core::{MemoryWeights, MoeConfig, RoutingMethod, Tensor};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_testkit::data::{ExpertData, LayerData};
use moe_testkit::matrix::{PARALLEL_MODES, SHAPES, deepseek_groups, routing_methods};
use moe_testkit::oracle::naive_moe;
use moe_testkit::ranks::token_split;
use moe_testkit::{ORACLE_BACKEND, all_cells, outcome_line, run_cells};

#[test]
fn every_routing_method_appears() {
    let cells = all_cells();
    for name in RoutingMethod::NAMES {
        assert!(
            cells.iter().any(|c| c.routing.name() == name),
            "routing method {name} is not in the matrix"
        );
    }
    for shape in SHAPES {
        assert_eq!(routing_methods(shape, 4).len(), RoutingMethod::NAMES.len());
    }
}

#[test]
fn every_cell_config_is_valid_and_ids_are_unique() {
    let cells = all_cells();
    let mut ids = HashSet::new();
    for c in &cells {
        c.config().validate().unwrap_or_else(|e| panic!("{}: {e}", c.id()));
        assert!(ids.insert(c.id()), "duplicate cell id {}", c.id());
    }
    // Every backend gets the same cells.
    let per_backend = cells.len() / moe::BACKEND_NAMES.len();
    for b in moe::BACKEND_NAMES {
        assert_eq!(cells.iter().filter(|c| c.backend == *b).count(), per_backend, "{b}");
    }
}

#[test]
fn every_parallel_mode_and_quant_format_appears() {
    let cells = all_cells();
    for mode in PARALLEL_MODES {
        assert!(
            cells.iter().any(|c| c.parallel == mode),
            "{mode:?} is not in the matrix"
        );
    }
    for algo in moe_core::QuantAlgo::ALL {
        assert!(cells.iter().any(|c| c.quant == algo), "{algo:?} is not in the matrix");
    }
    assert_eq!(token_split(19, 2), vec![10, 9]);
    assert_eq!(token_split(1, 2), vec![1, 0]);
    assert_eq!(token_split(0, 3), vec![0, 0, 0]);
}

#[test]
fn deepseek_groups_divide_the_experts() {
    assert_eq!(deepseek_groups(8, 2), (4, 2));
    assert_eq!(deepseek_groups(7, 2), (1, 1));
    assert_eq!(deepseek_groups(13, 3), (1, 1));
    assert_eq!(deepseek_groups(4, 4), (2, 2));
    assert_eq!(deepseek_groups(256, 8), (4, 2));
}

#[test]
fn the_oracle_is_a_registered_backend() {
    // The names come from the registry alone (`moe::BACKEND_NAMES` is derived from it and
    // check-boundaries parses it), so only the oracle's name needs checking here.
    assert!(moe::BACKEND_NAMES.contains(&ORACLE_BACKEND));
}

#[test]
fn naive_oracle_matches_a_hand_computation() {
    // E=2, k=1, H=2, I=1, SwiGLU; token [1, 2] goes to expert 1 with weight 1.
    // gate = 0.5*1 + 0.25*2 = 1, up = 1, act = silu(1) = 0.7310586, out = [2, -1] * act.
    let expert = |w1: [f32; 2], w3: [f32; 2], w2: [f32; 2]| ExpertData {
        w1: w1.to_vec(),
        w3: Some(w3.to_vec()),
        w2: w2.to_vec(),
        b1: None,
        b3: None,
        b2: None,
    };
    let data = LayerData {
        num_tokens: 1,
        x: Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap(),
        logits: Tensor::from_f32(vec![1, 2], vec![0.0, 1.0]).unwrap(),
        weights: MemoryWeights::new(),
        x_f32: vec![1.0, 2.0],
        logits_f32: vec![0.0, 1.0],
        experts: vec![
            expert([9.0, 9.0], [9.0, 9.0], [9.0, 9.0]),
            expert([0.5, 0.25], [1.0, 0.0], [2.0, -1.0]),
        ],
        act_quant: [ActQuant::None; 2],
    };
    let config = MoeConfig::new(2, 2, 1, moe_core::DType::F32, RoutingMethod::Renormalize { top_k: 1 });
    let y = naive_moe(&config, &data).unwrap();
    let silu1 = 1.0 / (1.0 + (-1.0f64).exp());
    assert!((f64::from(y[0]) - 2.0 * silu1).abs() < 1e-6, "{y:?}");
    assert!((f64::from(y[1]) + silu1).abs() < 1e-6, "{y:?}");
}

#[test]
fn the_matrix_passes() {
    let cells = all_cells();
    // Skips are printed (shown by `--nocapture`, and by nextest on failure) and counted.
    let report = run_cells(&cells, |o| {
        if matches!(o.verdict, moe_testkit::Verdict::Skip(_)) {
            println!("{}", outcome_line(o));
        }
    });
    println!("{}", report.summary());
    let failures: Vec<String> = report.failures().map(outcome_line).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cells failed (first 40 shown):\n{}",
        failures.len(),
        cells.len(),
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(report.passed() > 0, "no cell ran");
}
