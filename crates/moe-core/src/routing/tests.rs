//! Unit tests of the routing math against hand-computed values (core spec §3).
//!
//! Expected numbers are derived in the comments from closed forms (e^-1 = 0.36787944,
//! e^-2 = 0.13533528, sigmoid(x) = 1 / (1 + e^-x), softplus(x) = ln(1 + e^x)), never by
//! running the code under test.

use super::{RoutingMethod, RoutingOutput};
use crate::error::MoeError;

const NEG_INF: f32 = f32::NEG_INFINITY;

// sigmoid of the logits used below:
// sigmoid(0) = 0.5, sigmoid(1) = 1/(1+0.36787944) = 0.73105858, sigmoid(-1) = 0.26894142,
// sigmoid(2) = 1/(1+0.13533528) = 0.88079708, sigmoid(3) = 1/(1+0.04978707) = 0.95257413,
// sigmoid(1.5) = 1/(1+0.22313016) = 0.81757448, sigmoid(-5) = 1/(1+148.41316) = 0.00669285.
const SIG_0: f32 = 0.5;
const SIG_1: f32 = 0.731_058_6;
const SIG_2: f32 = 0.880_797_1;
const SIG_3: f32 = 0.952_574_1;

fn route(m: &RoutingMethod, logits: &[f32], n: usize, e: usize) -> RoutingOutput {
    match m.apply_host(logits, n, e) {
        Ok(out) => out,
        Err(err) => panic!("{} failed: {err}", m.name()),
    }
}

fn weights(out: &RoutingOutput) -> &[f32] {
    out.weights.as_deref().expect("weights present")
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "slot {i}: got {g}, want {w} (all: {got:?})");
    }
}

#[track_caller]
fn assert_non_finite(res: crate::error::Result<RoutingOutput>, want_location: &str) {
    match res {
        Err(MoeError::NonFinite { what, location }) => {
            assert_eq!(what, "router_logits");
            assert!(
                location.contains(want_location),
                "location {location:?} lacks {want_location:?}"
            );
        }
        other => panic!("expected NonFinite at {want_location}, got {other:?}"),
    }
}

// --- softmax family -----------------------------------------------------------------------

#[test]
fn default_is_raw_softmax_top_k() {
    // softmax([1,2,3]) = [e^-2, e^-1, 1] / (1 + 0.36787944 + 0.13533528 = 1.50321472)
    //                  = [0.09003057, 0.24472847, 0.66524096]; top-2 = experts 2, 1.
    let out = route(&RoutingMethod::Default { top_k: 2 }, &[1.0, 2.0, 3.0], 1, 3);
    assert_eq!(out.ids, vec![2, 1]);
    assert_close(weights(&out), &[0.665_240_96, 0.244_728_47], 1e-6);
    assert_eq!((out.num_tokens, out.top_k), (1, 2));
}

#[test]
fn renormalize_is_softmax_of_the_top_k_logits() {
    // top-2 of [1,2,3] = [3, 2]; softmax([3,2]) = [1, e^-1] / 1.36787944 = [0.73105858, 0.26894142].
    for m in [
        RoutingMethod::Renormalize { top_k: 2 },
        RoutingMethod::RenormalizeNaive { top_k: 2 },
    ] {
        let out = route(&m, &[1.0, 2.0, 3.0], 1, 3);
        assert_eq!(out.ids, vec![2, 1], "{}", m.name());
        assert_close(weights(&out), &[0.731_058_6, 0.268_941_4], 1e-6);
    }
}

#[test]
fn renormalize_naive_is_softmax_then_top_k_then_renormalize() {
    // Qwen3 on [1,2,3], k = 2: p = [0.09003057, 0.24472847, 0.66524096]; selected p sum to
    // 0.91 (0.90996943); 0.66524096 / 0.90996943 = 0.73105858 -- the same as Renormalize.
    let out = route(&RoutingMethod::RenormalizeNaive { top_k: 2 }, &[1.0, 2.0, 3.0], 1, 3);
    assert_close(
        weights(&out),
        &[0.665_240_96 / 0.909_969_43, 0.244_728_47 / 0.909_969_43],
        1e-6,
    );
}

#[test]
fn llama4_is_sigmoid_of_top_k_logits_without_renormalization() {
    let out = route(&RoutingMethod::Llama4 { top_k: 1 }, &[1.0, 2.0, 3.0], 1, 3);
    assert_eq!(out.ids, vec![2]);
    assert_close(weights(&out), &[SIG_3], 1e-6);
    let out = route(&RoutingMethod::Llama4 { top_k: 2 }, &[1.0, 2.0, 3.0], 1, 3);
    assert_eq!(out.ids, vec![2, 1]);
    assert_close(weights(&out), &[SIG_3, SIG_2], 1e-6); // sums to 1.83, not 1
}

#[test]
fn rows_are_routed_independently() {
    // Row 0 = [1,2,3] as above; row 1 = [3,2,1] mirrors it.
    let out = route(
        &RoutingMethod::Renormalize { top_k: 2 },
        &[1.0, 2.0, 3.0, 3.0, 2.0, 1.0],
        2,
        3,
    );
    assert_eq!(out.ids, vec![2, 1, 0, 1]);
    assert_close(
        weights(&out),
        &[0.731_058_6, 0.268_941_4, 0.731_058_6, 0.268_941_4],
        1e-6,
    );
}

/// A small deterministic generator (64-bit LCG), so the test needs no extra crate.
fn lcg_row(state: &mut u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // top 24 bits -> [0, 1) -> [-4, 4)
            ((*state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

#[test]
fn renormalize_equals_default_then_renormalize_on_random_rows() {
    let mut state = 0x5eed_u64;
    for (e, k) in [(8, 2), (16, 4), (64, 8), (256, 8), (7, 7)] {
        let n = 32;
        let logits = lcg_row(&mut state, n * e);
        let renorm = route(&RoutingMethod::Renormalize { top_k: k }, &logits, n, e);
        let default = route(&RoutingMethod::Default { top_k: k }, &logits, n, e);
        for t in 0..n {
            let row = t * k..(t + 1) * k;
            let mut a: Vec<(i32, f32)> = renorm.ids[row.clone()]
                .iter()
                .copied()
                .zip(weights(&renorm)[row.clone()].iter().copied())
                .collect();
            let p = &weights(&default)[row.clone()];
            let sum: f32 = p.iter().sum();
            let mut b: Vec<(i32, f32)> = default.ids[row]
                .iter()
                .copied()
                .zip(p.iter().map(|v| v / sum))
                .collect();
            a.sort_by_key(|x| x.0);
            b.sort_by_key(|x| x.0);
            let ids_a: Vec<i32> = a.iter().map(|x| x.0).collect();
            let ids_b: Vec<i32> = b.iter().map(|x| x.0).collect();
            assert_eq!(ids_a, ids_b, "E {e} k {k} token {t}");
            let wa: Vec<f32> = a.iter().map(|x| x.1).collect();
            let wb: Vec<f32> = b.iter().map(|x| x.1).collect();
            assert_close(&wa, &wb, 1e-6);
        }
    }
}

// --- ties and -inf --------------------------------------------------------------------------

#[test]
fn ties_go_to_the_lower_expert_index() {
    // softmax of four equal logits = 0.25 each.
    let out = route(&RoutingMethod::Default { top_k: 2 }, &[1.0; 4], 1, 4);
    assert_eq!(out.ids, vec![0, 1]);
    assert_close(weights(&out), &[0.25, 0.25], 1e-7);
    let out = route(&RoutingMethod::Renormalize { top_k: 2 }, &[0.0, 5.0, 5.0, 5.0], 1, 4);
    assert_eq!(out.ids, vec![1, 2]);
    assert_close(weights(&out), &[0.5, 0.5], 1e-7);
    let out = route(
        &RoutingMethod::SigmoidRenorm {
            top_k: 3,
            renormalize: true,
        },
        &[2.0, 1.0, 2.0, 2.0],
        1,
        4,
    );
    assert_eq!(out.ids, vec![0, 2, 3]);
}

#[test]
fn neg_infinity_logits_are_never_picked_by_softmax_methods() {
    // softmax([-inf, 0, 0, -inf]) = [0, 0.5, 0.5, 0].
    let logits = [NEG_INF, 0.0, 0.0, NEG_INF];
    let out = route(&RoutingMethod::Default { top_k: 2 }, &logits, 1, 4);
    assert_eq!(out.ids, vec![1, 2]);
    assert_close(weights(&out), &[0.5, 0.5], 1e-7);
    let out = route(&RoutingMethod::Renormalize { top_k: 2 }, &logits, 1, 4);
    assert_eq!(out.ids, vec![1, 2]);
    assert_close(weights(&out), &[0.5, 0.5], 1e-7);
    // sigmoid(-inf) = 0 < sigmoid(0): the finite entries win without a bias.
    let out = route(
        &RoutingMethod::SigmoidRenorm {
            top_k: 2,
            renormalize: false,
        },
        &logits,
        1,
        4,
    );
    assert_eq!(out.ids, vec![1, 2]);
    assert_close(weights(&out), &[SIG_0, SIG_0], 1e-7);
}

fn logit_methods(k: usize) -> Vec<RoutingMethod> {
    vec![
        RoutingMethod::Default { top_k: k },
        RoutingMethod::Renormalize { top_k: k },
        RoutingMethod::RenormalizeNaive { top_k: k },
        RoutingMethod::Llama4 { top_k: k },
        RoutingMethod::DeepSeekV3 {
            top_k: k,
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
            e_score_correction_bias: None,
            renormalize: true,
        },
        RoutingMethod::DeepSeekV3 {
            top_k: k,
            n_group: 2,
            topk_group: 2,
            routed_scaling_factor: 1.0,
            e_score_correction_bias: None,
            renormalize: true,
        },
        RoutingMethod::DeepSeekV4 {
            top_k: k,
            routed_scaling_factor: 1.0,
            bias: None,
        },
        RoutingMethod::MiniMax2 {
            top_k: k,
            bias: None,
            routed_scaling_factor: 1.0,
        },
        RoutingMethod::SqrtSoftplus { top_k: k, bias: None },
        RoutingMethod::SigmoidRenorm {
            top_k: k,
            renormalize: true,
        },
        RoutingMethod::SparseMixer { top_k: k, eps: 0.2 },
    ]
}

#[test]
fn nan_and_pos_infinity_are_refused_naming_token_and_expert() {
    for bad in [f32::NAN, f32::INFINITY] {
        for m in logit_methods(2) {
            let mut logits = vec![0.5f32; 8];
            logits[4 + 2] = bad; // token 1, expert 2
            assert_non_finite(m.apply_host(&logits, 2, 4), "token 1, expert 2");
        }
    }
}

#[test]
fn rows_with_fewer_than_k_finite_logits_are_refused() {
    for m in logit_methods(2) {
        let logits = [0.0, 1.0, 2.0, 3.0, NEG_INF, 1.0, NEG_INF, NEG_INF];
        assert_non_finite(m.apply_host(&logits, 2, 4), "token 1");
        // Exactly k finite logits are enough.
        let logits = [NEG_INF, 1.0, NEG_INF, 0.0];
        let out = route(&m, &logits, 1, 4);
        assert_eq!(out.ids.len(), 2, "{}", m.name());
    }
}

#[test]
fn logits_of_the_wrong_length_are_refused() {
    let res = RoutingMethod::Default { top_k: 1 }.apply_host(&[0.0; 7], 2, 4);
    assert!(
        matches!(res, Err(MoeError::ShapeMismatch { ref what, .. }) if what == "router_logits"),
        "{res:?}"
    );
}

// --- DeepSeek-V3 --------------------------------------------------------------------------------

fn ds3(
    k: usize,
    n_group: usize,
    topk_group: usize,
    r: f32,
    bias: Option<Vec<f32>>,
    renormalize: bool,
) -> RoutingMethod {
    RoutingMethod::DeepSeekV3 {
        top_k: k,
        n_group,
        topk_group,
        routed_scaling_factor: r,
        e_score_correction_bias: bias,
        renormalize,
    }
}

#[test]
fn deepseek_v3_single_group_orders_by_biased_score() {
    // s = sigmoid([0, 1, -1, 2]) = [0.5, 0.73105858, 0.26894142, 0.88079708];
    // bias [0.5, 0, 0, 0] -> sb = [1.0, 0.73105858, 0.26894142, 0.88079708]: picks 0 then 3
    // (without the bias it would pick 3, 1). Weights from the unbiased s:
    // sum = 1.38079708; [0.5, 0.88079708] / sum = [0.36210969, 0.63789031]; x 2.5 =
    // [0.90527422, 1.59472578], kept in biased order.
    let logits = [0.0, 1.0, -1.0, 2.0];
    let out = route(&ds3(2, 1, 1, 2.5, Some(vec![0.5, 0.0, 0.0, 0.0]), true), &logits, 1, 4);
    assert_eq!(out.ids, vec![0, 3]);
    assert_close(weights(&out), &[0.905_274_2, 1.594_725_8], 1e-6);
    // Without renormalization: s * r = [1.25, 2.2019927].
    let out = route(&ds3(2, 1, 1, 2.5, Some(vec![0.5, 0.0, 0.0, 0.0]), false), &logits, 1, 4);
    assert_eq!(out.ids, vec![0, 3]);
    assert_close(weights(&out), &[1.25, 2.201_992_7], 1e-6);
}

#[test]
fn deepseek_v3_grouped_path_resorts_by_unbiased_weight() {
    // Same row, two groups of two, both kept: the selection is the same {0, 3}, but the
    // general path re-sorts by the normalized weight: 3 (0.63789031) before 0 (0.36210969).
    let logits = [0.0, 1.0, -1.0, 2.0];
    let out = route(&ds3(2, 2, 2, 1.0, Some(vec![0.5, 0.0, 0.0, 0.0]), true), &logits, 1, 4);
    assert_eq!(out.ids, vec![3, 0]);
    assert_close(weights(&out), &[0.637_890_3, 0.362_109_7], 1e-6);
}

#[test]
fn deepseek_v3_group_selection_changes_the_result() {
    // E = 8, 4 groups of 2, keep 2 groups, k = 2, no bias, r = 1.
    // logits by group: [3, -5] [2, 2] [1.5, 1.5] [-5, -5]
    // s = [0.95257413, 0.00669285 | 0.88079708 x2 | 0.81757448 x2 | 0.00669285 x2]
    // group scores (sum of top-2) = [0.95926698, 1.76159416, 1.63514895, 0.01338570]
    // -> groups 1 and 2 survive; expert 0 (the global maximum) is masked out.
    // Top-2 among experts 2..=5: 2 and 3 (tie at 0.88079708, lower indices first);
    // weights = 0.5 each. Ungrouped top-2 would be experts 0 and 2.
    let logits = [3.0, -5.0, 2.0, 2.0, 1.5, 1.5, -5.0, -5.0];
    let out = route(&ds3(2, 4, 2, 1.0, None, true), &logits, 1, 8);
    assert_eq!(out.ids, vec![2, 3]);
    assert_close(weights(&out), &[0.5, 0.5], 1e-6);
    let ungrouped = route(&ds3(2, 1, 1, 1.0, None, true), &logits, 1, 8);
    assert_eq!(ungrouped.ids, vec![0, 2]);
    // 0.95257413 / (0.95257413 + 0.88079708 = 1.83337121) = 0.51957520; 0.88079708 / 1.83337121 = 0.48042480
    assert_close(weights(&ungrouped), &[0.519_575_2, 0.480_424_8], 1e-6);
}

#[test]
fn deepseek_v3_group_ties_go_to_the_lower_group() {
    // Four identical groups of 2; keep 1 -> group 0; k = 2 -> experts 0, 1.
    let out = route(&ds3(2, 4, 1, 1.0, None, true), &[0.0; 8], 1, 8);
    assert_eq!(out.ids, vec![0, 1]);
    assert_close(weights(&out), &[0.5, 0.5], 1e-6);
}

#[test]
fn deepseek_v3_group_score_counts_a_repeated_maximum_twice() {
    // Groups of 3: [2, 2, -5] scores 2 * 0.88079708 = 1.76159416; [3, -5, -5] scores
    // 0.95257413 + 0.00669285 = 0.95926698. Keep 1 group -> group 0, experts 0 and 1.
    let logits = [2.0, 2.0, -5.0, 3.0, -5.0, -5.0];
    let out = route(&ds3(2, 2, 1, 1.0, None, true), &logits, 1, 6);
    assert_eq!(out.ids, vec![0, 1]);
}

// --- DeepSeek-V4, MiniMax2, SqrtSoftplus, SigmoidRenorm -----------------------------------------

// sqrt(softplus(x)) for x = [0, 1, -1, 2]:
// softplus = [ln 2 = 0.69314718, ln(1 + e) = 1.31326169, ln(1 + e^-1) = 0.31326169,
//             ln(1 + e^2) = 2.12692801]
// sqrt     = [0.83255461, 1.14597630, 0.55969785, 1.45839913]

#[test]
fn deepseek_v4_is_sqrt_softplus_renormalized_without_eps() {
    // top-2 = 3, 1; sum = 2.60437543; [1.45839913, 1.14597630] / sum x 1.5 = [0.83997056, 0.66002944].
    let m = RoutingMethod::DeepSeekV4 {
        top_k: 2,
        routed_scaling_factor: 1.5,
        bias: None,
    };
    let out = route(&m, &[0.0, 1.0, -1.0, 2.0], 1, 4);
    assert_eq!(out.ids, vec![3, 1]);
    assert_close(weights(&out), &[0.839_970_6, 0.660_029_4], 1e-6);
    // bias [1, 0, 0, 0]: expert 0 scores 1.83255461 > 1.45839913 and comes first;
    // sum = 2.29095374; [0.83255461, 1.45839913] / sum x 1.5 = [0.54511442, 0.95488558].
    let m = RoutingMethod::DeepSeekV4 {
        top_k: 2,
        routed_scaling_factor: 1.5,
        bias: Some(vec![1.0, 0.0, 0.0, 0.0]),
    };
    let out = route(&m, &[0.0, 1.0, -1.0, 2.0], 1, 4);
    assert_eq!(out.ids, vec![0, 3]);
    assert_close(weights(&out), &[0.545_114_4, 0.954_885_6], 1e-6);
}

#[test]
fn deepseek_v4_refuses_a_zero_score_sum_instead_of_dividing_by_it() {
    // sqrt(softplus(-200)) underflows to 0 in f32, so every selected score is 0.
    let m = RoutingMethod::DeepSeekV4 {
        top_k: 1,
        routed_scaling_factor: 1.0,
        bias: None,
    };
    let res = m.apply_host(&[-200.0, -200.0], 1, 2);
    assert!(
        matches!(res, Err(MoeError::NonFinite { ref what, .. }) if what == "routing_weights"),
        "{res:?}"
    );
}

#[test]
fn softplus_is_stable_at_the_extremes() {
    use super::methods::{softplus, sqrt_softplus};
    assert_eq!(softplus(100.0), 100.0); // exp(100) would overflow f32
    assert_eq!(softplus(f32::MAX), f32::MAX);
    assert_eq!(softplus(NEG_INF), 0.0);
    assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
    assert_eq!(sqrt_softplus(400.0), 20.0);
}

#[test]
fn minimax2_picks_by_biased_sigmoid_and_weights_by_unbiased() {
    // sb = [1.0, 0.73105858, 0.26894142, 0.88079708] -> 0, 3 (as in the DeepSeek-V3 case);
    // w = [0.5, 0.88079708] / (1.38079708 + 1e-20) = [0.36210969, 0.63789031].
    let bias = Some(vec![0.5, 0.0, 0.0, 0.0]);
    let m = RoutingMethod::MiniMax2 {
        top_k: 2,
        bias: bias.clone(),
        routed_scaling_factor: 1.0,
    };
    let out = route(&m, &[0.0, 1.0, -1.0, 2.0], 1, 4);
    assert_eq!(out.ids, vec![0, 3]);
    assert_close(weights(&out), &[0.362_109_7, 0.637_890_3], 1e-6);
    // MiniMax-M3's factor multiplies the renormalized weights.
    let m = RoutingMethod::MiniMax2 {
        top_k: 2,
        bias,
        routed_scaling_factor: 2.0,
    };
    let out = route(&m, &[0.0, 1.0, -1.0, 2.0], 1, 4);
    assert_close(weights(&out), &[0.724_219_4, 1.275_780_6], 1e-6);
}

#[test]
fn sqrt_softplus_renormalizes_with_factor_one() {
    // top-2 = 3, 1; [1.45839913, 1.14597630] / 2.60437543 = [0.55998037, 0.44001963].
    let m = RoutingMethod::SqrtSoftplus { top_k: 2, bias: None };
    let out = route(&m, &[0.0, 1.0, -1.0, 2.0], 1, 4);
    assert_eq!(out.ids, vec![3, 1]);
    assert_close(weights(&out), &[0.559_980_4, 0.440_019_6], 1e-6);
}

#[test]
fn sigmoid_renorm_with_and_without_renormalization() {
    // top-2 of s = 3, 1; [0.88079708, 0.73105858] / 1.61185566 = [0.54644910, 0.45355090].
    let logits = [0.0, 1.0, -1.0, 2.0];
    let out = route(
        &RoutingMethod::SigmoidRenorm {
            top_k: 2,
            renormalize: true,
        },
        &logits,
        1,
        4,
    );
    assert_eq!(out.ids, vec![3, 1]);
    assert_close(weights(&out), &[0.546_449_1, 0.453_550_9], 1e-6);
    let out = route(
        &RoutingMethod::SigmoidRenorm {
            top_k: 2,
            renormalize: false,
        },
        &logits,
        1,
        4,
    );
    assert_eq!(out.ids, vec![3, 1]);
    assert_close(weights(&out), &[SIG_2, SIG_1], 1e-6);
}

// --- SparseMixer --------------------------------------------------------------------------------

#[test]
fn sparse_mixer_matches_the_spec_vectors() {
    // TensorRT-LLM's test_sparse_mixer_reference, eps = 0.2 (mask when the gap > 0.4):
    // [1, 1, -inf, -inf]: step 1 softmax over {1, 1} = 0.5; step 2 over {1} alone = 1.0.
    // [2, 0, -inf, -inf]: step 1 masks 0 (gap 2/2 = 1) -> 1.0; step 2 leaves {0} -> 1.0.
    // [0, 2, -inf, -inf]: mirrored: ids [1, 0], weights [1, 1].
    // [1, 1, 1, -inf]: step 1 over three equal logits = 1/3; step 2 over two = 0.5.
    let logits = [
        1.0, 1.0, NEG_INF, NEG_INF, //
        2.0, 0.0, NEG_INF, NEG_INF, //
        0.0, 2.0, NEG_INF, NEG_INF, //
        1.0, 1.0, 1.0, NEG_INF,
    ];
    let out = route(&RoutingMethod::SparseMixer { top_k: 2, eps: 0.2 }, &logits, 4, 4);
    assert_eq!(out.ids, vec![0, 1, 0, 1, 1, 0, 0, 1]);
    assert_close(weights(&out), &[0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 / 3.0, 0.5], 1e-6);
}

#[test]
fn sparse_mixer_keeps_entries_within_the_relative_gap() {
    // eps = 0.2, row [2, 1.5, -1, 1], k = 2.
    // Step 1, m = 2: gaps (2-1.5)/2 = 0.25 (kept), (2+1)/max(1,2) = 1.5 (masked),
    //   (2-1)/2 = 0.5 (masked) -> softmax over {2, 1.5}: 1 / (1 + e^-0.5 = 1.60653066) = 0.62245933.
    // Step 2, expert 0 removed, m = 1.5: gaps (1.5+1)/1.5 = 1.67 (masked), (1.5-1)/1.5 = 0.33
    //   (kept) -> softmax over {1.5, 1}: 0.62245933 again, at expert 1.
    let out = route(
        &RoutingMethod::SparseMixer { top_k: 2, eps: 0.2 },
        &[2.0, 1.5, -1.0, 1.0],
        1,
        4,
    );
    assert_eq!(out.ids, vec![0, 1]);
    assert_close(weights(&out), &[0.622_459_3, 0.622_459_3], 1e-6);
}

// --- Static and LoadBalanced --------------------------------------------------------------------

#[test]
fn static_returns_its_table() {
    let logits = [0.1, 0.2, 0.3, 0.4, 0.4, 0.3, 0.2, 0.1];
    let m = RoutingMethod::Static {
        top_k: 4,
        ids: vec![0, 1, 2, 3, 0, 1, 2, 3],
        scales: None,
    };
    let out = route(&m, &logits, 2, 4);
    assert_eq!(out.ids, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    assert_eq!(out.weights, None);
    let scales = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
    let m = RoutingMethod::Static {
        top_k: 4,
        ids: vec![3, 2, 1, 0, 0, 1, 2, 3],
        scales: Some(scales.clone()),
    };
    let out = route(&m, &logits, 2, 4);
    assert_eq!(out.ids, vec![3, 2, 1, 0, 0, 1, 2, 3]);
    assert_eq!(out.weights, Some(scales));
}

#[test]
fn static_with_the_wrong_row_count_is_refused() {
    let m = RoutingMethod::Static {
        top_k: 2,
        ids: vec![0, 1, 2, 3],
        scales: None,
    }; // 2 rows
    let res = m.apply_host(&[0.0; 12], 3, 4);
    match res {
        Err(MoeError::ShapeMismatch { what, actual, .. }) => {
            assert_eq!(what, "routing.ids");
            assert_eq!(actual, vec![2, 2]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn load_balanced_spreads_slots_evenly() {
    for (k, tokens) in [(2usize, 2usize), (2, 32), (3, 100)] {
        let out = route(
            &RoutingMethod::LoadBalanced { top_k: k },
            &vec![0.0; tokens * 4],
            tokens,
            4,
        );
        assert_eq!(out.ids.len(), tokens * k);
        assert!(weights(&out).iter().all(|&w| w == 1.0));
        for expert in 0..4 {
            let count = out.ids.iter().filter(|&&i| i == expert).count();
            assert_eq!(count, tokens * k / 4, "k {k} tokens {tokens} expert {expert}");
        }
    }
    let out = route(&RoutingMethod::LoadBalanced { top_k: 3 }, &[0.0; 8], 2, 4);
    assert_eq!(out.ids, vec![0, 1, 2, 3, 0, 1]);
}

// --- validate -----------------------------------------------------------------------------------

#[track_caller]
fn assert_config_error(res: crate::error::Result<()>, want_field: &str) {
    match res {
        Err(MoeError::InvalidConfig { field, .. }) => assert_eq!(field, want_field),
        other => panic!("expected InvalidConfig({want_field}), got {other:?}"),
    }
}

#[test]
fn validate_refuses_top_k_above_num_experts() {
    assert_config_error(RoutingMethod::Default { top_k: 5 }.validate(4), "routing.top_k");
    assert_config_error(RoutingMethod::Default { top_k: 0 }.validate(4), "routing.top_k");
    let res = RoutingMethod::Renormalize { top_k: 5 }.apply_host(&[0.0; 4], 1, 4);
    assert!(matches!(res, Err(MoeError::InvalidConfig { .. })), "{res:?}");
}

#[test]
fn validate_refuses_n_group_not_dividing_num_experts() {
    assert_config_error(ds3(2, 3, 1, 1.0, None, true).validate(8), "routing.n_group");
    assert_config_error(ds3(2, 0, 1, 1.0, None, true).validate(8), "routing.n_group");
    assert_config_error(ds3(2, 4, 5, 1.0, None, true).validate(8), "routing.topk_group");
    assert_config_error(
        ds3(2, 2, 1, 1.0, Some(vec![0.0; 3]), true).validate(8),
        "routing.e_score_correction_bias",
    );
    assert!(ds3(2, 4, 2, 1.0, None, true).validate(8).is_ok());
}

#[test]
fn validate_refuses_a_non_finite_scaling_factor() {
    let m = RoutingMethod::MiniMax2 {
        top_k: 1,
        bias: None,
        routed_scaling_factor: f32::NAN,
    };
    assert_config_error(m.validate(4), "routing.routed_scaling_factor");
    let m = RoutingMethod::DeepSeekV4 {
        top_k: 1,
        routed_scaling_factor: f32::INFINITY,
        bias: None,
    };
    assert_config_error(m.validate(4), "routing.routed_scaling_factor");
}
