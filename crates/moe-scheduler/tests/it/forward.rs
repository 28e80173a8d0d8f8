//! Chunking, padding, weight-on-input and communication order of the external scheduler.

use std::sync::{Arc, Mutex};

use moe_core::*;
use moe_scheduler::{ExternalCommScheduler, split_chunk};

use crate::doubles::*;

/// Logits that route token t to expert `t % e` (weight ~1) and `(t + 1) % e` (second).
fn logits(t: usize, e: usize) -> Tensor {
    let mut v = vec![0.0; t * e];
    for i in 0..t {
        v[i * e + i % e] = 8.0;
        v[i * e + (i + 1) % e] = 6.0;
    }
    Tensor::from_f32(vec![t, e], v).unwrap()
}

fn config(e: usize, k: usize, chunk: Option<usize>) -> MoeConfig {
    let mut c = MoeConfig::new(e, 2, 2, DType::F32, RoutingMethod::Renormalize { top_k: k });
    c.moe_max_num_tokens = chunk;
    c
}

fn run(
    config: &MoeConfig,
    backend: &ScaleBackend,
    comm: Option<Box<dyn Communication>>,
    x: &Tensor,
    l: &Tensor,
    list: Option<&[usize]>,
) -> Result<Tensor> {
    let mut slot = Slot(comm);
    let view = LayerView {
        config,
        backend,
        comm: &mut slot,
        balancer: None,
        repeat_idx: 0,
        repeat_count: 1,
    };
    let args = ForwardArgs {
        x,
        router_logits: l,
        output_dtype: DType::F32,
        all_rank_num_tokens: list,
        use_dp_padding: false,
    };
    ExternalCommScheduler.forward(view, args)
}

#[test]
fn output_does_not_depend_on_the_chunk_limit() {
    let (t, e) = (10, 4);
    let (x, l) = (ramp(t), logits(t, e));
    let whole = run(
        &config(e, 2, None),
        &ScaleBackend::new(&config(e, 2, None)),
        None,
        &x,
        &l,
        None,
    )
    .unwrap();
    // Hand check of token 0: experts 0 (logit 8) and 1 (logit 6); softmax([8, 6]) weighs
    // slot+1 factors 1 and 2: f = (1 * e^8 + 2 * e^6) / (e^8 + e^6).
    let f0 = (8f32.exp() + 2.0 * 6f32.exp()) / (8f32.exp() + 6f32.exp());
    let y = whole.as_f32("y").unwrap();
    assert!((y[0] - f0).abs() < 1e-5 && (y[1] + f0).abs() < 1e-5, "{:?}", &y[..2]);
    for limit in [1, 3, 4, 16] {
        let c = config(e, 2, Some(limit));
        let backend = ScaleBackend::new(&c);
        let out = run(&c, &backend, None, &x, &l, None).unwrap();
        assert_eq!(out.as_f32("y").unwrap(), y, "chunk limit {limit}");
        let chunks = t.div_ceil(limit).max(1);
        assert_eq!(
            *backend.calls.lock().unwrap(),
            split_chunk(t, chunks),
            "chunk sizes for limit {limit}"
        );
    }
}

#[test]
fn weight_on_input_scales_x_and_drops_output_weights() {
    let mut c = config(4, 1, None);
    c.apply_router_weight_on_input = true;
    let (x, l) = (ramp(3), logits(3, 4));
    let out = run(&c, &ScaleBackend::new(&c), None, &x, &l, None).unwrap();
    // k = 1 Renormalize gives weight 1, so x is scaled by 1 and the output by slot + 1.
    let y = out.as_f32("y").unwrap();
    assert_eq!(y, &[1.0, -1.0, 4.0, -4.0, 9.0, -9.0]);
}

#[test]
fn bad_shapes_are_typed_errors_naming_the_tensor() {
    let c = config(4, 2, None);
    let b = ScaleBackend::new(&c);
    let wide = Tensor::from_f32(vec![2, 3], vec![0.0; 6]).unwrap();
    let err = run(&c, &b, None, &wide, &logits(2, 4), None).unwrap_err();
    assert!(
        matches!(&err, MoeError::ShapeMismatch { what, .. } if what == "x"),
        "{err}"
    );
    let err = run(&c, &b, None, &ramp(2), &logits(3, 4), None).unwrap_err();
    assert!(
        matches!(&err, MoeError::ShapeMismatch { what, .. } if what == "router_logits"),
        "{err}"
    );
    let half = Tensor::from_f32_as(DType::BF16, vec![2, 2], &[0.0; 4]).unwrap();
    let err = run(&c, &b, None, &half, &logits(2, 4), None).unwrap_err();
    assert!(
        matches!(&err, MoeError::DTypeMismatch { what, .. } if what == "x"),
        "{err}"
    );
}

#[test]
fn zero_tokens_give_an_empty_output() {
    let c = config(4, 2, Some(4));
    let out = run(&c, &ScaleBackend::new(&c), None, &ramp(0), &logits(0, 4), None).unwrap();
    assert_eq!(out.shape(), &[0, 2]);
}

fn dp_config(ranks: usize, rank: usize, chunk: Option<usize>) -> MoeConfig {
    let mut c = config(4, 2, chunk);
    c.parallel = ParallelConfig {
        ep_size: ranks,
        ep_rank: rank,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    c
}

#[test]
fn zero_token_rank_is_padded_and_truncated() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let comm = RecordingComm {
        log: log.clone(),
        alltoall: false,
        feasible: true,
        post_quant: true,
    };
    let c = dp_config(2, 1, None);
    let b = ScaleBackend::new(&c);
    let out = run(&c, &b, Some(Box::new(comm)), &ramp(0), &logits(0, 4), Some(&[3, 0])).unwrap();
    assert_eq!(out.shape(), &[0, 2], "padding rows are truncated away");
    assert_eq!(
        *b.calls.lock().unwrap(),
        vec![3],
        "the empty rank still runs the kernel with max rows"
    );
    insta::assert_debug_snapshot!(log.lock().unwrap().clone(), @r#"
    [
        "prepare(rows=3, list=[3, 3])",
        "dispatch(rows=3, list=[3, 3], padded=true)",
        "combine(rows=3, max=3)",
    ]
    "#);
}

#[test]
fn dp_chunks_substitute_empty_chunks_and_agree_on_sizes() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let comm = RecordingComm {
        log: log.clone(),
        alltoall: false,
        feasible: true,
        post_quant: false,
    };
    // Rank 1 of 2 holds 1 token; rank 0 holds 5. rows = 2 * 5 = 10, limit 4 -> 3 chunks.
    let c = dp_config(2, 1, Some(4));
    let b = ScaleBackend::new(&c);
    let (x, l) = (ramp(1), logits(1, 4));
    let out = run(&c, &b, Some(Box::new(comm)), &x, &l, Some(&[5, 1])).unwrap();
    assert_eq!(out.shape(), &[1, 2]);
    let single = run(
        &config(4, 2, None),
        &ScaleBackend::new(&config(4, 2, None)),
        None,
        &x,
        &l,
        None,
    )
    .unwrap();
    assert_eq!(out.as_f32("y").unwrap(), single.as_f32("y").unwrap());
    assert_eq!(
        *b.calls.lock().unwrap(),
        vec![1, 1, 1],
        "empty chunks run chunk 0 again"
    );
    insta::assert_debug_snapshot!(log.lock().unwrap().clone(), @r#"
    [
        "prepare(rows=1, list=[2, 1])",
        "dispatch(rows=1, list=[2, 1], padded=false)",
        "combine(rows=1, max=2)",
        "prepare(rows=1, list=[2, 1])",
        "dispatch(rows=1, list=[2, 1], padded=false)",
        "combine(rows=1, max=2)",
        "prepare(rows=1, list=[1, 1])",
        "dispatch(rows=1, list=[1, 1], padded=false)",
        "combine(rows=1, max=1)",
    ]
    "#);
}

#[test]
fn dp_without_token_counts_is_refused() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let comm = RecordingComm {
        log,
        alltoall: false,
        feasible: true,
        post_quant: true,
    };
    let c = dp_config(2, 0, None);
    let err = run(
        &c,
        &ScaleBackend::new(&c),
        Some(Box::new(comm)),
        &ramp(2),
        &logits(2, 4),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("all_rank_num_tokens"), "{err}");
}
