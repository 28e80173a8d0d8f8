//! The fused-communication scheduler: real-count chunking agreed by all ranks, zero-token
//! launches, padding stripped, EPLB set stage after the kernel.

use std::sync::{Arc, Mutex};

use moe_core::*;
use moe_scheduler::FusedCommScheduler;

use crate::doubles::*;

fn run(
    rank: usize,
    list: Option<&[usize]>,
    x_rows: usize,
    chunk: Option<usize>,
    balancer: Option<&mut RecordingBalancer>,
) -> (Tensor, Vec<usize>) {
    let mut c = MoeConfig::new(4, 2, 2, DType::F32, RoutingMethod::LoadBalanced { top_k: 1 });
    c.moe_max_num_tokens = chunk;
    c.parallel = ParallelConfig {
        ep_size: 2,
        ep_rank: rank,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    let backend = ScaleBackend::new(&c);
    let mut slot = Slot(None);
    let view = LayerView {
        config: &c,
        backend: &backend,
        comm: &mut slot,
        balancer: balancer.map(|b| b as &mut dyn LoadBalancer),
        repeat_idx: 0,
        repeat_count: 1,
    };
    let x = ramp(x_rows);
    let l = Tensor::from_f32(vec![x_rows, 4], vec![0.0; x_rows * 4]).unwrap();
    let args = ForwardArgs {
        x: &x,
        router_logits: &l,
        output_dtype: DType::F32,
        all_rank_num_tokens: list,
        use_dp_padding: true,
    };
    let out = FusedCommScheduler.forward(view, args).unwrap();
    let calls = backend.calls.lock().unwrap().clone();
    (out, calls)
}

#[test]
fn every_rank_launches_every_chunk_even_without_tokens() {
    // Rank 0 has 5 real tokens, rank 1 has none; limit 2 -> ceil(5 / 2) = 3 chunks on both.
    let (out0, calls0) = run(0, Some(&[5, 0]), 5, Some(2), None);
    let (out1, calls1) = run(1, Some(&[5, 0]), 5, Some(2), None);
    assert_eq!(calls0, vec![2, 2, 1]);
    assert_eq!(calls1, vec![0, 0, 0], "zero-token chunks still reach the kernel");
    assert_eq!(out0.rows(), 5);
    assert_eq!(out1.rows(), 0, "padding rows are stripped, not computed");
}

#[test]
fn set_cpu_stage_follows_the_kernel() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut b = RecordingBalancer {
        log: log.clone(),
        dynamic: true,
        repeats: 1,
        offset: 0,
    };
    run(0, Some(&[3, 1]), 3, None, Some(&mut b));
    insta::assert_debug_snapshot!(log.lock().unwrap().clone(), @r#"
    [
        "start_wait_gpu",
        "done_wait_gpu",
        "statistic(rows=3, first=true, last=true, ignore_allreduce=false)",
        "route(rows=3)",
        "start_set_cpu",
        "done_set_cpu",
    ]
    "#);
}

#[test]
fn without_token_counts_the_local_rows_are_the_work() {
    let (out, calls) = run(1, None, 4, Some(3), None);
    assert_eq!(calls, vec![2, 2]);
    assert_eq!(out.rows(), 4);
}
