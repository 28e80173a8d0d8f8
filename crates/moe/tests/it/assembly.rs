//! `create_moe`, `ConfigurableMoe` and `resolve_moe_impl` against the real CPU backends.

use std::sync::{Arc, Mutex};

use moe::{ConfigurableMoe, CreateOptions, LayerParts, create_moe, create_moe_with, resolve_moe_impl};
use moe_core::*;

use crate::random::{Rng, expert_weights};

const E: usize = 8;
const H: usize = 16;
const I: usize = 12;

fn config(backend: Option<&str>) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
    c.backend = backend.map(str::to_owned);
    c
}

fn inputs(t: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(7);
    (
        rng.tensor(DType::F32, vec![t, H], 1.0),
        rng.tensor(DType::F32, vec![t, E], 3.0),
    )
}

fn loaded(c: MoeConfig) -> ConfigurableMoe {
    let mut layer = create_moe(c).unwrap();
    layer
        .load_weights(&expert_weights(&mut Rng::new(1), E, H, I, DType::F32))
        .unwrap();
    layer
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_f32_vec("a").unwrap(), b.to_f32_vec("b").unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn automatic_selection_picks_the_fast_cpu_backend() {
    let layer = create_moe(config(None)).unwrap();
    assert_eq!(layer.backend_name(), "cpu");
    let r = layer.report();
    assert_eq!(r.selected_by, SelectedBy::Automatic);
    assert_eq!(r.alternatives(), &["cpu-fused".to_string(), "reference".to_string()]);
    let text = r.to_string();
    assert!(
        text.starts_with("backend: cpu (selected by Automatic; requested: auto)"),
        "{text}"
    );
}

#[test]
fn requested_reference_is_honoured() {
    let layer = create_moe(config(Some("reference"))).unwrap();
    assert_eq!(layer.backend_name(), "reference");
    assert!(!layer.report().degraded());
}

#[test]
fn both_backends_agree_through_the_assembler() {
    let (x, l) = inputs(9);
    let a = loaded(config(Some("reference"))).forward(&x, &l).unwrap();
    let b = loaded(config(Some("cpu"))).forward(&x, &l).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4, "{}", max_abs_diff(&a, &b));
}

#[test]
fn forward_before_loading_is_a_lifecycle_error() {
    let mut layer = create_moe(config(None)).unwrap();
    let (x, l) = inputs(2);
    assert!(matches!(layer.forward(&x, &l), Err(MoeError::Lifecycle { .. })));
}

#[test]
fn the_assembler_is_not_an_implementation() {
    let c = config(None);
    let env = moe::probe_environment();
    let v = ConfigurableMoe::can_implement(&MoeProblem::from_config(&c), &MoeDeployment::from_config(&c, env));
    assert!(matches!(
        v,
        Eligibility::No {
            reason: RejectReason::NotAnImpl,
            ..
        }
    ));
}

/// Counts calls and tells the scheduler the layer repeats 3 times per iteration.
struct Repeating(Arc<Mutex<Vec<(bool, bool)>>>);

impl LoadBalancer for Repeating {
    fn is_dynamic(&self) -> bool {
        true
    }
    fn repeat_count(&self) -> usize {
        3
    }
    fn start_wait_gpu_stage(&mut self) -> Result<()> {
        Ok(())
    }
    fn done_wait_gpu_stage(&mut self) -> Result<()> {
        Ok(())
    }
    fn update_statistic(&mut self, _: &Tensor, first: bool, last: bool, _: bool) -> Result<()> {
        self.0.lock().unwrap().push((first, last));
        Ok(())
    }
    fn route(&mut self, ids: &Tensor, _: bool) -> Result<Tensor> {
        Ok(ids.clone())
    }
    fn start_set_cpu_stage(&mut self) -> Result<()> {
        Ok(())
    }
    fn done_set_cpu_stage(&mut self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn repeat_idx_advances_once_per_call_whatever_the_chunking() {
    let flags = Arc::new(Mutex::new(Vec::new()));
    let mut c = config(None);
    c.moe_max_num_tokens = Some(2);
    let parts = LayerParts {
        balancer: Some(Box::new(Repeating(flags.clone()))),
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
    layer
        .load_weights(&expert_weights(&mut Rng::new(1), E, H, I, DType::F32))
        .unwrap();
    let (x, l) = inputs(5); // 3 chunks per call
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(layer.repeat_idx());
        layer.forward(&x, &l).unwrap();
    }
    assert_eq!(seen, vec![0, 1, 2, 0]);
    let f = flags.lock().unwrap().clone();
    // first = first chunk of repeat 0; last = last chunk of repeat 2.
    let firsts: Vec<_> = f.iter().enumerate().filter(|(_, (a, _))| *a).map(|(i, _)| i).collect();
    let lasts: Vec<_> = f.iter().enumerate().filter(|(_, (_, b))| *b).map(|(i, _)| i).collect();
    assert_eq!(firsts, vec![0, 9]);
    assert_eq!(lasts, vec![8]);
}

#[test]
fn static_eplb_placement_with_replicas_leaves_the_output_unchanged() {
    let (x, l) = inputs(11);
    let plain = loaded(config(None)).forward(&x, &l).unwrap();
    for table in [None, Some(vec![3, 1, 4, 0, 5, 2, 7, 6, 3, 3, 0, 7])] {
        let mut c = config(None);
        c.eplb = Some(EplbConfig {
            num_slots: 12,
            layer_updates_per_iter: 0,
            initial_global_assignments: table,
        });
        let y = loaded(c).forward(&x, &l).unwrap();
        assert!(max_abs_diff(&plain, &y) < 1e-5, "{}", max_abs_diff(&plain, &y));
    }
}

#[test]
fn impossible_configurations_are_refused_with_the_field_named() {
    let mut c = config(None);
    c.routing = RoutingMethod::Renormalize { top_k: E + 1 };
    let err = create_moe(c).unwrap_err();
    assert!(
        matches!(&err, MoeError::InvalidConfig { field, .. } if field == "routing.top_k"),
        "{err}"
    );

    let mut c = config(None);
    c.routing = RoutingMethod::DeepSeekV3 {
        top_k: 2,
        n_group: 3,
        topk_group: 1,
        routed_scaling_factor: 1.0,
        e_score_correction_bias: None,
        renormalize: true,
    };
    let err = create_moe(c).unwrap_err();
    assert!(
        matches!(&err, MoeError::InvalidConfig { field, .. } if field == "routing.n_group"),
        "{err}"
    );

    let err = create_moe(config(Some("tpu"))).unwrap_err();
    assert!(
        matches!(&err, MoeError::InvalidConfig { field, .. } if field == "backend"),
        "{err}"
    );

    let mut c = config(None);
    c.parallel.ep_size = 2;
    let err = create_moe(c).unwrap_err().to_string();
    assert!(err.contains("no process group"), "{err}");

    // FP8 per-tensor folds scales across experts at load, so its slots cannot migrate.
    let mut c = config(None);
    c.quant.algo = QuantAlgo::Fp8PerTensor;
    c.eplb = Some(EplbConfig {
        num_slots: 8,
        layer_updates_per_iter: 1,
        initial_global_assignments: None,
    });
    let err = create_moe(c).unwrap_err();
    assert!(
        matches!(
            &err,
            MoeError::Unsupported {
                reason: RejectReason::EplbUnsupported,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("does not support online EPLB"), "{err}");
}

#[test]
fn unsupported_quantization_lists_every_rejection() {
    let mut c = config(None);
    c.quant.algo = QuantAlgo::Fp8Block;
    c.dtype = DType::F16;
    let report = resolve_moe_impl(&c, &moe::probe_environment()).unwrap();
    assert_eq!(report.selected_by, SelectedBy::Failed);
    let names: Vec<_> = report.rejected.iter().map(|r| r.backend.as_str()).collect();
    assert_eq!(names, ["cuda", "cpu", "cpu-fused", "reference"]);
    // The device backend is rejected first for a missing GPU where there is none, else for
    // the dtype like the others.
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason == RejectReason::DtypeUnsupported
                || (r.backend == "cuda" && r.reason == RejectReason::DepMissing))
    );
    let err = create_moe(c).unwrap_err().to_string();
    assert!(
        err.contains("cpu: DTYPE_UNSUPPORTED") && err.contains("reference: DTYPE_UNSUPPORTED"),
        "{err}"
    );
}
