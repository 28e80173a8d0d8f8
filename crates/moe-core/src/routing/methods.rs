//! The math of every routing method (core spec §3.2-§3.3), row by row on host f32 slices.
//!
//! Each method is written the way TensorRT-LLM's PyTorch reference computes it (same operation
//! order, same `1e-20` epsilons, same softplus threshold) so that device kernels can be checked
//! against this file. Deliberate differences from the references, all about determinism:
//!
//! * top-k is always sorted descending with ties to the lower expert index (see [`TopK`]).
//!   Methods the spec calls "unsorted" (MiniMax2, SqrtSoftplus, SigmoidRenorm) return this
//!   sorted order too: their slot order is unspecified, and the sorted order is one valid
//!   instance of it.
//! * logits are checked before any math (module doc of `routing`): NaN / `+inf` are refused,
//!   and so is a row with fewer than `k` finite logits. For the sigmoid and softplus methods a
//!   `-inf` logit scores exactly 0, as in the references; with a bias such an expert can still
//!   be picked (weight 0), which keeps the selected set identical to the references'.

use super::deepseek::{self, Groups};
use super::topk::TopK;
use super::{RoutingMethod, RoutingOutput};
use crate::error::{MoeError, Result};

/// The epsilon the references add to a renormalization denominator (`sum + 1e-20`).
pub(super) const EPS: f32 = 1e-20;

/// Buffers reused across the rows of one call, so the per-row path does not allocate.
#[derive(Debug)]
pub(super) struct Scratch {
    /// Per-expert scores (softmax probabilities, sigmoid or sqrt-softplus scores, working
    /// copy of the logits).
    pub(super) a: Vec<f32>,
    /// Per-expert selection scores (score + bias, masked logits).
    pub(super) b: Vec<f32>,
    pub(super) top: TopK,
    pub(super) groups: Groups,
}

impl Scratch {
    fn new(e: usize, k: usize, groups: Groups) -> Self {
        Scratch {
            a: vec![0.0; e],
            b: vec![0.0; e],
            top: TopK::new(k),
            groups,
        }
    }
}

/// How the selected scores become weights.
#[derive(Clone, Copy, Debug)]
pub(super) enum Norm {
    /// `w = s * r` (no renormalization).
    Raw,
    /// `w = s / (sum + 1e-20) * r`.
    Eps,
    /// `w = s / sum * r` (DeepSeek-V4 has no epsilon; a zero sum is refused instead of
    /// producing NaN weights).
    Exact,
}

pub(super) fn apply(m: &RoutingMethod, logits: &[f32], n: usize, e: usize) -> Result<RoutingOutput> {
    let k = m.top_k();
    // `validate` has already run in `apply_host`; repeated here because the chunking below
    // would panic on k = 0 and the id casts need E to fit in i32.
    if k == 0 || k > e {
        return Err(MoeError::config(
            "routing.top_k",
            format!("top_k {k} must be in 1..={e}"),
        ));
    }
    if i32::try_from(e).is_err() {
        return Err(MoeError::config(
            "num_experts",
            format!("{e} experts do not fit i32 expert ids"),
        ));
    }
    match m {
        // These two never read the logits, so a NaN there cannot mis-route anything.
        RoutingMethod::Static { ids, scales, .. } => return static_table(ids, scales.as_deref(), n, k),
        RoutingMethod::LoadBalanced { .. } => return Ok(load_balanced(n, e, k)),
        _ => {}
    }
    if n.checked_mul(e) != Some(logits.len()) {
        return Err(MoeError::shape("router_logits", format!("[{n}, {e}]"), &[logits.len()]));
    }
    check_logits(logits, e, k)?;

    let groups = match m {
        RoutingMethod::DeepSeekV3 {
            n_group, topk_group, ..
        } if *n_group > 1 => Groups::new(*n_group, *topk_group, k),
        _ => Groups::new(0, 0, 0),
    };
    let mut sc = Scratch::new(e, k, groups);
    let mut ids = vec![0i32; n * k];
    let mut weights = vec![0.0f32; n * k];
    let rows = logits
        .chunks_exact(e)
        .zip(ids.chunks_exact_mut(k).zip(weights.chunks_exact_mut(k)));
    for (t, (row, (out_i, out_w))) in rows.enumerate() {
        match m {
            RoutingMethod::Default { .. } => default_row(&mut sc, row, out_i, out_w),
            // RenormalizeNaive is specified as softmax -> top-k -> renormalize, and
            // TensorRT-LLM runs it through Renormalize's path (top-k of the logits, softmax of
            // the k values): the same math, since softmax is monotone and the shared
            // normalizer cancels.
            RoutingMethod::Renormalize { .. } | RoutingMethod::RenormalizeNaive { .. } => {
                renormalize_row(&mut sc, row, out_i, out_w)
            }
            RoutingMethod::Llama4 { .. } => llama4_row(&mut sc, row, out_i, out_w),
            RoutingMethod::DeepSeekV3 {
                n_group,
                e_score_correction_bias,
                renormalize,
                routed_scaling_factor,
                ..
            } => {
                let norm = if *renormalize { Norm::Eps } else { Norm::Raw };
                let bias = e_score_correction_bias.as_deref();
                if *n_group > 1 {
                    deepseek::grouped_row(&mut sc, row, *n_group, bias, norm, *routed_scaling_factor, out_i, out_w);
                } else {
                    // validate pins topk_group to 1 when n_group is 1: the spec's short path,
                    // ordered by the biased score.
                    scored_row(
                        &mut sc,
                        row,
                        sigmoid,
                        bias,
                        norm,
                        *routed_scaling_factor,
                        t,
                        out_i,
                        out_w,
                    )?;
                }
            }
            RoutingMethod::DeepSeekV4 {
                bias,
                routed_scaling_factor,
                ..
            } => scored_row(
                &mut sc,
                row,
                sqrt_softplus,
                bias.as_deref(),
                Norm::Exact,
                *routed_scaling_factor,
                t,
                out_i,
                out_w,
            )?,
            RoutingMethod::MiniMax2 {
                bias,
                routed_scaling_factor,
                ..
            } => scored_row(
                &mut sc,
                row,
                sigmoid,
                bias.as_deref(),
                Norm::Eps,
                *routed_scaling_factor,
                t,
                out_i,
                out_w,
            )?,
            RoutingMethod::SqrtSoftplus { bias, .. } => scored_row(
                &mut sc,
                row,
                sqrt_softplus,
                bias.as_deref(),
                Norm::Eps,
                1.0,
                t,
                out_i,
                out_w,
            )?,
            RoutingMethod::SigmoidRenorm { renormalize, .. } => {
                let norm = if *renormalize { Norm::Eps } else { Norm::Raw };
                scored_row(&mut sc, row, sigmoid, None, norm, 1.0, t, out_i, out_w)?
            }
            RoutingMethod::SparseMixer { eps, .. } => sparse_mixer_row(&mut sc, row, *eps, t, out_i, out_w)?,
            RoutingMethod::Static { .. } | RoutingMethod::LoadBalanced { .. } => {}
        }
    }
    Ok(RoutingOutput {
        num_tokens: n,
        top_k: k,
        ids,
        weights: Some(weights),
    })
}

/// Enforces the NaN policy of the `routing` module doc.
fn check_logits(logits: &[f32], e: usize, k: usize) -> Result<()> {
    for (t, row) in logits.chunks_exact(e).enumerate() {
        let mut finite = 0usize;
        for (j, &v) in row.iter().enumerate() {
            if v.is_nan() || v == f32::INFINITY {
                return Err(MoeError::NonFinite {
                    what: "router_logits".into(),
                    location: format!("token {t}, expert {j}"),
                });
            }
            if v.is_finite() {
                finite += 1;
            }
        }
        if finite < k {
            return Err(MoeError::NonFinite {
                what: "router_logits".into(),
                location: format!("token {t}: only {finite} finite logits for top_k {k}"),
            });
        }
    }
    Ok(())
}

pub(super) fn sigmoid(x: f32) -> f32 {
    // The form PyTorch uses; saturates to exactly 0 at -inf and for x below about -88.
    1.0 / (1.0 + (-x).exp())
}

/// `softplus` with PyTorch's default threshold: above 20, `log1p(exp(x))` equals `x` in f32
/// and `exp` would overflow long before the result does.
pub(super) fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

pub(super) fn sqrt_softplus(x: f32) -> f32 {
    softplus(x).sqrt()
}

/// Writes one output row from `(expert, weight)` pairs, best first.
pub(super) fn emit(pairs: impl Iterator<Item = (usize, f32)>, out_i: &mut [i32], out_w: &mut [f32]) {
    for ((j, w), (oi, ow)) in pairs.zip(out_i.iter_mut().zip(out_w.iter_mut())) {
        // `apply` checked that every expert index fits i32.
        *oi = j as i32;
        *ow = w;
    }
}

/// `p = softmax(L)`; `(w, i) = topk(p, k)`: raw probabilities, not renormalized.
fn default_row(sc: &mut Scratch, row: &[f32], out_i: &mut [i32], out_w: &mut [f32]) {
    // check_logits guarantees a finite maximum, so `x - max` is never `inf - inf`.
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for (p, &x) in sc.a.iter_mut().zip(row) {
        *p = (x - max).exp();
        sum += *p;
    }
    for p in sc.a.iter_mut() {
        *p /= sum;
    }
    // Top-k of the probabilities rather than of the logits, as specified: rounding can make
    // two distinct logits equal probabilities, and then the lower index must win.
    let top = sc.top.select(&sc.a);
    emit(top.iter().map(|&(p, j)| (j, p)), out_i, out_w);
}

/// `(v, i) = topk(L, k)`; `w = softmax(v)`.
fn renormalize_row(sc: &mut Scratch, row: &[f32], out_i: &mut [i32], out_w: &mut [f32]) {
    let top = sc.top.select(row);
    // The first value is the maximum (and finite: at least k logits are).
    let max = top.first().map_or(0.0, |e| e.0);
    let sum: f32 = top.iter().map(|&(v, _)| (v - max).exp()).sum();
    emit(top.iter().map(|&(v, j)| (j, (v - max).exp() / sum)), out_i, out_w);
}

/// `(v, i) = topk(L, k)`; `w = sigmoid(v)`, no renormalization despite the class name.
fn llama4_row(sc: &mut Scratch, row: &[f32], out_i: &mut [i32], out_w: &mut [f32]) {
    let top = sc.top.select(row);
    emit(top.iter().map(|&(v, j)| (j, sigmoid(v))), out_i, out_w);
}

/// The score-then-bias family: `s = score(L)`; `i = topk(s + bias, k)`; weights from the
/// unbiased `s[i]` per `norm`, times `r`. Output ordered by the biased score.
fn scored_row(
    sc: &mut Scratch,
    row: &[f32],
    score: impl Fn(f32) -> f32,
    bias: Option<&[f32]>,
    norm: Norm,
    r: f32,
    t: usize,
    out_i: &mut [i32],
    out_w: &mut [f32],
) -> Result<()> {
    for (s, &x) in sc.a.iter_mut().zip(row) {
        *s = score(x);
    }
    let top = match bias {
        Some(bias) => {
            for ((sb, &s), &b) in sc.b.iter_mut().zip(&sc.a).zip(bias) {
                *sb = s + b;
            }
            sc.top.select(&sc.b)
        }
        None => sc.top.select(&sc.a),
    };
    let s = &sc.a;
    let sum: f32 = top.iter().map(|&(_, j)| s[j]).sum();
    match norm {
        Norm::Raw => emit(top.iter().map(|&(_, j)| (j, s[j] * r)), out_i, out_w),
        Norm::Eps => {
            let d = sum + EPS;
            emit(top.iter().map(|&(_, j)| (j, s[j] / d * r)), out_i, out_w)
        }
        Norm::Exact => {
            // sqrt(softplus(x)) underflows to 0 below x of about -103, so a row of very negative
            // logits gives 0/0 in the reference; refuse it rather than emit NaN weights.
            if !(sum > 0.0 && sum.is_finite()) {
                return Err(MoeError::NonFinite {
                    what: "routing_weights".into(),
                    location: format!("token {t}: the selected scores sum to {sum}"),
                });
            }
            emit(top.iter().map(|&(_, j)| (j, s[j] / sum * r)), out_i, out_w)
        }
    }
    Ok(())
}

/// SparseMixer (PhiMoE): iterative argmax with the `2·eps` relative-gap mask.
///
/// Which copy of the logits the mask and the softmax read: TensorRT-LLM's `apply` masks the
/// previous pick to `-inf` *in place* in its fp32 working copy, then computes the gap mask
/// and the softmax from that same working copy. The spec's vectors (eps 0.2, k 2) require the
/// softmax to read the working copy: for `[1, 1, -inf, -inf]` step 2 picks expert 1 with
/// `m = 1`; over the working copy `[-inf, 1, -inf, -inf]` its weight is 1.0 (expected), over
/// the original row it would be 0.5; likewise `[1, 1, 1, -inf]` gives 0.5 at step 2 only when
/// expert 0 is gone. The gap mask could read either copy with the same result (PhiMoE's own
/// code computes it from the original scores): the two copies differ only at earlier picks,
/// which are `-inf` in the working copy whatever the mask says. `[2, 0, -inf, -inf]` gives
/// `[1, 1]` either way: step 1 masks 0 (gap `2/2 = 1 > 0.4`), step 2 has only expert 1 left.
fn sparse_mixer_row(
    sc: &mut Scratch,
    row: &[f32],
    eps: f32,
    t: usize,
    out_i: &mut [i32],
    out_w: &mut [f32],
) -> Result<()> {
    let threshold = 2.0 * eps;
    let work = &mut sc.a;
    work.copy_from_slice(row);
    let mut prev: Option<usize> = None;
    for (step, (oi, ow)) in out_i.iter_mut().zip(out_w.iter_mut()).enumerate() {
        // The reference sets the working copy's current argmax to -inf; that argmax is the
        // previous pick, since nothing else changed the working copy in between.
        if let Some(w) = prev.and_then(|p| work.get_mut(p)) {
            *w = f32::NEG_INFINITY;
        }
        // Strict `>` while scanning upwards: ties go to the lower index.
        let (mut m, mut idx) = (f32::NEG_INFINITY, 0usize);
        for (j, &v) in work.iter().enumerate() {
            if v > m {
                m = v;
                idx = j;
            }
        }
        if !m.is_finite() {
            // Unreachable after check_logits (k finite logits, one removed per step); kept as
            // the reference's assert, as an error instead of a panic.
            return Err(MoeError::NonFinite {
                what: "router_logits".into(),
                location: format!("token {t}: no finite logit left for sparse_mixer step {step}"),
            });
        }
        // Softmax of the masked working copy, read at idx. The masked maximum is m itself
        // (idx's own gap is 0, or 0/0 = NaN when m = 0, and NaN > x is false), so the
        // numerator is exp(0) = 1. `-inf` entries give inf/inf = NaN gaps: not masked, and
        // they contribute exp(-inf) = 0 anyway.
        let mut sum = 0.0f32;
        for &x in work.iter() {
            let masked = (m - x) / x.abs().max(m) > threshold;
            if !masked {
                sum += (x - m).exp();
            }
        }
        *oi = idx as i32;
        *ow = 1.0 / sum;
        prev = Some(idx);
    }
    Ok(())
}

/// Returns the fixed table; one row per token.
fn static_table(ids: &[i32], scales: Option<&[f32]>, n: usize, k: usize) -> Result<RoutingOutput> {
    if n.checked_mul(k) != Some(ids.len()) {
        return Err(MoeError::shape(
            "routing.ids",
            format!("[{n}, {k}] (one row per token)"),
            &[ids.len() / k, k],
        ));
    }
    if let Some(s) = scales.filter(|s| s.len() != ids.len()) {
        return Err(MoeError::shape(
            "routing.scales",
            format!("[{n}, {k}]"),
            &[s.len() / k, k],
        ));
    }
    Ok(RoutingOutput {
        num_tokens: n,
        top_k: k,
        ids: ids.to_vec(),
        weights: scales.map(<[f32]>::to_vec),
    })
}

/// Ids cycle through `0..E` over the flattened `[N, k]` slots; weights 1.
fn load_balanced(n: usize, e: usize, k: usize) -> RoutingOutput {
    let ids = (0..n * k).map(|s| (s % e) as i32).collect();
    RoutingOutput {
        num_tokens: n,
        top_k: k,
        ids,
        weights: Some(vec![1.0; n * k]),
    }
}
