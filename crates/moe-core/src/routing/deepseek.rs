//! DeepSeek-V3 `noaux_tc` group-limited routing (core spec §3.3, general path).
//!
//! Matches HF transformers' `DeepseekV3MoE.route_tokens_to_experts`: sigmoid scores, biased
//! scores pick `topk_group` of `n_group` groups by the sum of each group's top-2, top-k among
//! the experts of those groups (the others masked to `-inf`; HF masked with 0.0 until its
//! April 2026 parity fix, which only differs when unmasked biased scores are negative),
//! weights gathered from the *unbiased* scores, renormalized with `+1e-20`, times
//! `routed_scaling_factor`. TensorRT-LLM then re-sorts the k slots by that final weight; HF
//! leaves them unsorted, so the selected sets agree and the order follows TensorRT-LLM.
//! The `n_group == 1` short path lives in `methods::scored_row`.

use super::methods::{EPS, Norm, Scratch, emit, sigmoid};
use super::topk::TopK;

/// Per-call buffers of the group stage.
#[derive(Debug)]
pub(super) struct Groups {
    scores: Vec<f32>,
    top: TopK,
    chosen: Vec<usize>,
    sel: Vec<(f32, usize)>,
}

impl Groups {
    pub(super) fn new(n_group: usize, topk_group: usize, k: usize) -> Self {
        Groups {
            scores: vec![0.0; n_group],
            top: TopK::new(topk_group),
            chosen: Vec::with_capacity(topk_group),
            sel: Vec::with_capacity(k),
        }
    }
}

/// One row of the general path. Requires (checked by `validate`): `n_group > 1` divides
/// `E`, groups of at least 2 experts, `k <= topk_group * E / n_group`, a finite bias of
/// length `E`.
pub(super) fn grouped_row(
    sc: &mut Scratch,
    row: &[f32],
    n_group: usize,
    bias: Option<&[f32]>,
    norm: Norm,
    r: f32,
    out_i: &mut [i32],
    out_w: &mut [f32],
) {
    let e = row.len();
    let per_group = e / n_group;
    for (j, (&x, (s, sb))) in row.iter().zip(sc.a.iter_mut().zip(sc.b.iter_mut())).enumerate() {
        *s = sigmoid(x);
        *sb = *s + bias.and_then(|b| b.get(j)).copied().unwrap_or(0.0);
    }

    let g = &mut sc.groups;
    for (score, group) in g.scores.iter_mut().zip(sc.b.chunks_exact(per_group)) {
        *score = top2_sum(group);
    }
    g.chosen.clear();
    g.chosen.extend(g.top.select(&g.scores).iter().map(|&(_, gi)| gi));
    // Offering experts in ascending index order keeps "ties to the lower expert index" in the
    // expert top-k; the groups were chosen by score, so put them back in index order first.
    g.chosen.sort_unstable();

    sc.top.clear();
    for &gi in &g.chosen {
        let start = gi * per_group;
        for (j, &v) in sc.b.iter().enumerate().skip(start).take(per_group) {
            sc.top.push(v, j);
        }
    }

    let s = &sc.a;
    let picked = sc.top.entries();
    let sum: f32 = picked.iter().map(|&(_, j)| s[j]).sum();
    g.sel.clear();
    g.sel.extend(picked.iter().map(|&(_, j)| {
        let w = match norm {
            Norm::Raw => s[j] * r,
            // grouped_row is only called with Raw or Eps; Exact is DeepSeek-V4's and has no
            // grouped form, but it would mean the same renormalization here.
            Norm::Eps | Norm::Exact => s[j] / (sum + EPS) * r,
        };
        (w, j)
    }));
    // The spec's final `topk(normalized, k)`: by weight descending, ties to the lower index.
    g.sel.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    emit(g.sel.iter().map(|&(w, j)| (j, w)), out_i, out_w);
}

/// Sum of the two largest values (`topk(2).sum()`; a repeated maximum counts twice).
fn top2_sum(group: &[f32]) -> f32 {
    let (mut m1, mut m2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in group {
        if v > m1 {
            m2 = m1;
            m1 = v;
        } else if v > m2 {
            m2 = v;
        }
    }
    m1 + m2
}
