//! EPLB hooks fire in the spec's order, with first/last spanning chunks and repeats.

use std::sync::{Arc, Mutex};

use moe_core::*;
use moe_scheduler::ExternalCommScheduler;

use crate::doubles::*;

fn run_with_balancer(
    balancer: &mut RecordingBalancer,
    comm: Option<Box<dyn Communication>>,
    repeat_idx: usize,
    chunk: Option<usize>,
) -> Tensor {
    let mut c = MoeConfig::new(4, 2, 2, DType::F32, RoutingMethod::LoadBalanced { top_k: 1 });
    c.moe_max_num_tokens = chunk;
    let backend = ScaleBackend::new(&c);
    let mut slot = Slot(comm);
    let repeat_count = balancer.repeat_count();
    let view = LayerView {
        config: &c,
        backend: &backend,
        comm: &mut slot,
        balancer: Some(balancer),
        repeat_idx,
        repeat_count,
    };
    let x = ramp(4);
    let l = Tensor::from_f32(vec![4, 4], vec![0.0; 16]).unwrap();
    let args = ForwardArgs {
        x: &x,
        router_logits: &l,
        output_dtype: DType::F32,
        all_rank_num_tokens: None,
        use_dp_padding: false,
    };
    ExternalCommScheduler.forward(view, args).unwrap()
}

#[test]
fn dynamic_hooks_span_chunks_and_repeats() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = RecordingBalancer {
        log: log.clone(),
        dynamic: true,
        repeats: 2,
        offset: 0,
    };
    run_with_balancer(&mut b, None, 0, Some(2));
    log.lock().unwrap().push("-- repeat 1 --".into());
    run_with_balancer(&mut b, None, 1, Some(2));
    insta::assert_debug_snapshot!(log.lock().unwrap().clone(), @r#"
    [
        "start_wait_gpu",
        "done_wait_gpu",
        "statistic(rows=2, first=true, last=false, ignore_allreduce=false)",
        "route(rows=2)",
        "statistic(rows=2, first=false, last=false, ignore_allreduce=false)",
        "route(rows=2)",
        "-- repeat 1 --",
        "statistic(rows=2, first=false, last=false, ignore_allreduce=false)",
        "route(rows=2)",
        "statistic(rows=2, first=false, last=true, ignore_allreduce=false)",
        "route(rows=2)",
        "start_set_cpu",
        "done_set_cpu",
    ]
    "#);
}

#[test]
fn static_balancer_only_routes_and_its_slots_reach_the_backend() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = RecordingBalancer {
        log: log.clone(),
        dynamic: false,
        repeats: 1,
        offset: 1,
    };
    let out = run_with_balancer(&mut b, None, 0, None);
    assert_eq!(*log.lock().unwrap(), vec!["route(rows=4)".to_string()]);
    // LoadBalanced routes token t to expert t; the balancer maps it to slot t + 1, and the
    // double multiplies by slot + 1.
    let y = out.as_f32("y").unwrap();
    assert_eq!(y, &[2.0, -2.0, 6.0, -6.0, 12.0, -12.0, 20.0, -20.0]);
}

#[test]
fn set_cpu_stage_brackets_combine() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let comm = RecordingComm {
        log: log.clone(),
        alltoall: false,
        feasible: true,
        post_quant: true,
    };
    let mut b = RecordingBalancer {
        log: log.clone(),
        dynamic: true,
        repeats: 1,
        offset: 0,
    };
    run_with_balancer(&mut b, Some(Box::new(comm)), 0, None);
    insta::assert_debug_snapshot!(log.lock().unwrap().clone(), @r#"
    [
        "start_wait_gpu",
        "done_wait_gpu",
        "statistic(rows=4, first=true, last=true, ignore_allreduce=false)",
        "route(rows=4)",
        "prepare(rows=4, list=[4])",
        "dispatch(rows=4, list=[4], padded=false)",
        "start_set_cpu",
        "combine(rows=4, max=4)",
        "done_set_cpu",
    ]
    "#);
}
