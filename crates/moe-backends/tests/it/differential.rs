//! The CPU backend against the reference oracle on random layers.

use moe_backends::{CpuBackend, ReferenceBackend};
use moe_core::{Activation, DType, MoeBackend};

use crate::common::{activations, checkpoint, config, loaded, rel_l2, routing, run};

const ACTIVATIONS: [Activation; 3] = [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2];

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// Compares both backends on one layer over several token counts and k.
fn compare(dtype: DType, activation: Activation, bias: bool, seed: u64) {
    for k in [1, 2, 4] {
        let mut c = config(8, 48, 40, k, dtype);
        c.activation = activation;
        c.bias = bias;
        let src = checkpoint(&c, seed + k as u64);
        let cpu: CpuBackend = loaded(&c, &src);
        let reference: ReferenceBackend = loaded(&c, &src);
        // Uneven counts: decode (1), below and above the dot-product threshold, and enough
        // rows per expert that the CPU backend cuts them into several blocks.
        for n in [1, 3, 5, 37, 301] {
            let x = activations(n, c.hidden_size, dtype, seed + n as u64);
            let (ids, w) = routing(n, k, c.num_experts, seed * 31 + n as u64);
            for weights in [Some(w.as_slice()), None] {
                let want = run(&reference, &x, &ids, weights, dtype);
                let got = run(&cpu, &x, &ids, weights, dtype);
                let err = rel_l2(&got, &want);
                assert!(
                    err <= tolerance(dtype),
                    "{dtype} {activation:?} bias={bias} k={k} n={n} weights={}: rel L2 {err:e}",
                    weights.is_some()
                );
            }
        }
    }
}

#[test]
fn f32_matches_reference_for_every_activation() {
    for (a, act) in ACTIVATIONS.into_iter().enumerate() {
        for bias in [false, true] {
            compare(DType::F32, act, bias, 100 + a as u64 * 7 + u64::from(bias));
        }
    }
}

#[test]
fn bf16_matches_reference_for_every_activation() {
    for (a, act) in ACTIVATIONS.into_iter().enumerate() {
        for bias in [false, true] {
            compare(DType::BF16, act, bias, 200 + a as u64 * 7 + u64::from(bias));
        }
    }
}

#[test]
fn f16_matches_reference() {
    compare(DType::F16, Activation::Swiglu, true, 300);
}

#[test]
fn outputs_in_another_dtype_than_the_layer() {
    let c = config(4, 16, 8, 2, DType::BF16);
    let src = checkpoint(&c, 7);
    let cpu: CpuBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(9, 16, DType::BF16, 1);
    let (ids, w) = routing(9, 2, 4, 2);
    let want = run(&reference, &x, &ids, Some(&w), DType::F32);
    let got = run(&cpu, &x, &ids, Some(&w), DType::F32);
    assert!(
        rel_l2(&got, &want) <= 1e-5,
        "f32 output of a bf16 layer: {:e}",
        rel_l2(&got, &want)
    );
}

#[test]
fn zero_tokens_give_an_empty_output() {
    let c = config(4, 16, 8, 2, DType::F32);
    let src = checkpoint(&c, 3);
    let cpu: CpuBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(0, 16, DType::F32, 1);
    let ids = moe_core::Tensor::from_i32(vec![0, 2], vec![]).unwrap();
    let ctx = moe_core::MoeRunContext {
        x: &x,
        x_sf: None,
        token_selected_slots: &ids,
        token_final_scales: None,
        output_dtype: DType::BF16,
        all_rank_num_tokens: None,
        comm_plan: None,
    };
    for b in [&cpu as &dyn MoeBackend, &reference] {
        let y = b.run_moe(&ctx).unwrap();
        assert_eq!(y.shape(), &[0, 16]);
        assert_eq!(y.dtype(), DType::BF16);
    }
}

#[test]
fn repeated_calls_reuse_the_workspace_and_agree() {
    let c = config(8, 32, 16, 2, DType::F32);
    let src = checkpoint(&c, 11);
    let cpu: CpuBackend = loaded(&c, &src);
    let big = activations(200, 32, DType::F32, 1);
    let small = activations(3, 32, DType::F32, 2);
    let (ids_big, w_big) = routing(200, 2, 8, 3);
    let (ids_small, w_small) = routing(3, 2, 8, 4);
    let first = run(&cpu, &small, &ids_small, Some(&w_small), DType::F32);
    run(&cpu, &big, &ids_big, Some(&w_big), DType::F32);
    let again = run(&cpu, &small, &ids_small, Some(&w_small), DType::F32);
    assert_eq!(first, again, "a shrinking chunk must not see stale rows");
}

#[test]
fn runs_inside_a_caller_pool() {
    let c = config(8, 64, 32, 2, DType::F32);
    let src = checkpoint(&c, 5);
    let cpu: CpuBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(64, 64, DType::F32, 9);
    let (ids, w) = routing(64, 2, 8, 10);
    let want = run(&reference, &x, &ids, Some(&w), DType::F32);
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let got = pool.install(|| run(&cpu, &x, &ids, Some(&w), DType::F32));
        assert!(rel_l2(&got, &want) <= 1e-5, "{threads} threads");
    }
}

#[test]
fn concurrent_calls_on_one_backend_agree() {
    use rayon::prelude::*;
    let c = config(8, 32, 16, 2, DType::BF16);
    let src = checkpoint(&c, 13);
    let cpu: CpuBackend = loaded(&c, &src);
    let inputs: Vec<_> = (0..8)
        .map(|i| {
            let n = 5 + 20 * i;
            let (ids, w) = routing(n, 2, 8, 50 + i as u64);
            (activations(n, 32, DType::BF16, i as u64), ids, w)
        })
        .collect();
    // The work plan depends on the pool size, so the baseline runs in the same pool; then the
    // concurrent results must be bit-identical.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let serial: Vec<_> = pool.install(|| {
        inputs
            .iter()
            .map(|(x, ids, w)| run(&cpu, x, ids, Some(w), DType::F32))
            .collect()
    });
    for _ in 0..3 {
        let parallel: Vec<_> = pool.install(|| {
            inputs
                .par_iter()
                .map(|(x, ids, w)| run(&cpu, x, ids, Some(w), DType::F32))
                .collect()
        });
        assert!(parallel == serial, "concurrent calls differ from serial ones");
    }
}
