//! Decompositions of the layer: the sum over EP ranks, TP ranks or EPLB slot placements
//! equals the undivided layer (invariant 11 of the architecture brief).

use moe_backends::{CpuBackend, ReferenceBackend};
use moe_core::{Activation, DType, EplbConfig, MoeBackend, MoeConfig};

use crate::common::{activations, add_into, checkpoint, config, loaded, rel_l2, routing, run};

/// Sum of `run` over ranks built by `rank_config(r)` for `r < ranks`.
fn sum_over_ranks<B: MoeBackend>(
    ranks: usize,
    rank_config: impl Fn(usize) -> MoeConfig,
    src: &moe_core::MemoryWeights,
    x: &moe_core::Tensor,
    ids: &[i32],
    w: &[f32],
) -> Vec<f64> {
    let mut acc = vec![0.0; x.numel()];
    for r in 0..ranks {
        let b: B = loaded(&rank_config(r), src);
        add_into(&mut acc, &run(&b, x, ids, Some(w), DType::F32));
    }
    acc
}

fn check_ep<B: MoeBackend>(base: &MoeConfig, ep_sizes: &[usize]) {
    let src = checkpoint(base, 42);
    let n = 29;
    let x = activations(n, base.hidden_size, base.dtype, 1);
    let (ids, w) = routing(n, base.top_k(), base.num_experts, 2);
    let whole: B = loaded(base, &src);
    let want = run(&whole, &x, &ids, Some(&w), DType::F32);
    for &ep in ep_sizes {
        let got = sum_over_ranks::<B>(
            ep,
            |r| {
                let mut c = base.clone();
                c.parallel.ep_size = ep;
                c.parallel.ep_rank = r;
                c
            },
            &src,
            &x,
            &ids,
            &w,
        );
        let err = rel_l2(&got, &want);
        assert!(err <= 1e-5, "ep={ep}: rel L2 {err:e}");
    }
}

#[test]
fn ep_ranks_sum_to_the_whole_layer_including_uneven_splits() {
    let mut c = config(8, 32, 24, 2, DType::F32);
    c.bias = true;
    // 8 experts over 3 ranks: 3 + 3 + 2.
    check_ep::<CpuBackend>(&c, &[2, 3, 4, 8]);
    check_ep::<ReferenceBackend>(&c, &[3]);
    c.activation = Activation::Relu2;
    check_ep::<CpuBackend>(&c, &[3]);
}

#[test]
fn tp_ranks_sum_to_the_whole_layer() {
    for act in [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2] {
        let mut base = config(4, 32, 24, 2, DType::F32);
        base.activation = act;
        base.bias = true;
        let src = checkpoint(&base, 9);
        let n = 17;
        let x = activations(n, 32, DType::F32, 3);
        let (ids, w) = routing(n, 2, 4, 4);
        let whole: CpuBackend = loaded(&base, &src);
        let want = run(&whole, &x, &ids, Some(&w), DType::F32);
        for tp in [2, 3, 4] {
            let rank_config = |r| {
                let mut c = base.clone();
                c.parallel.tp_size = tp;
                c.parallel.tp_rank = r;
                c
            };
            let got = sum_over_ranks::<CpuBackend>(tp, rank_config, &src, &x, &ids, &w);
            let err = rel_l2(&got, &want);
            assert!(err <= 1e-5, "{act:?} tp={tp}: rel L2 {err:e}");
            let got = sum_over_ranks::<ReferenceBackend>(tp, rank_config, &src, &x, &ids, &w);
            assert!(rel_l2(&got, &want) <= 1e-5, "{act:?} tp={tp} reference");
        }
    }
}

#[test]
fn ep_and_tp_together() {
    let mut base = config(6, 16, 16, 3, DType::F32);
    base.bias = true;
    let src = checkpoint(&base, 21);
    let x = activations(11, 16, DType::F32, 5);
    let (ids, w) = routing(11, 3, 6, 6);
    let whole: ReferenceBackend = loaded(&base, &src);
    let want = run(&whole, &x, &ids, Some(&w), DType::F32);
    let (ep, tp) = (4, 2);
    let got = sum_over_ranks::<CpuBackend>(
        ep * tp,
        |r| {
            let mut c = base.clone();
            c.parallel.ep_size = ep;
            c.parallel.ep_rank = r / tp;
            c.parallel.tp_size = tp;
            c.parallel.tp_rank = r % tp;
            c
        },
        &src,
        &x,
        &ids,
        &w,
    );
    assert!(rel_l2(&got, &want) <= 1e-5);
}

#[test]
fn eplb_replica_slots_reproduce_the_expert_layer() {
    // 4 experts in 6 slots over 2 ranks; default table: rank 0 = [0, 1, 2], rank 1 = [2, 3, 0].
    let base = config(4, 24, 16, 2, DType::F32);
    let src = checkpoint(&base, 77);
    let n = 23;
    let x = activations(n, 24, DType::F32, 8);
    let (experts, w) = routing(n, 2, 4, 9);
    let whole: CpuBackend = loaded(&base, &src);
    let want = run(&whole, &x, &experts, Some(&w), DType::F32);

    let table = [0usize, 1, 2, 2, 3, 0];
    // Route each selection to one of its expert's replicas, alternating by token parity.
    let slots: Vec<i32> = experts
        .iter()
        .enumerate()
        .map(|(p, &e)| {
            let replicas: Vec<usize> = (0..6).filter(|&s| table[s] == e as usize).collect();
            replicas[(p / 2) % replicas.len()] as i32
        })
        .collect();
    let rank_config = |r| {
        let mut c = base.clone();
        c.parallel.ep_size = 2;
        c.parallel.ep_rank = r;
        c.eplb = Some(EplbConfig {
            num_slots: 6,
            layer_updates_per_iter: 0,
            initial_global_assignments: None,
        });
        c
    };
    let got = sum_over_ranks::<CpuBackend>(2, rank_config, &src, &x, &slots, &w);
    assert!(rel_l2(&got, &want) <= 1e-5, "cpu: {:e}", rel_l2(&got, &want));
    let got = sum_over_ranks::<ReferenceBackend>(2, rank_config, &src, &x, &slots, &w);
    assert!(rel_l2(&got, &want) <= 1e-5, "reference: {:e}", rel_l2(&got, &want));
}
