//! Routing: router logits `[N, E]` -> expert ids `[N, k]` (i32) and weights `[N, k]` (f32).
//!
//! The math of every TensorRT-LLM routing method is specified once here, on host slices in
//! f32; `moe-kernels` executes it on the tensor's device (the CPU path calls
//! [`RoutingMethod::apply_host`]). Top-k ties go to the lower expert index.
//!
//! NaN policy: a NaN or `+inf` router logit is refused with `MoeError::NonFinite` naming the
//! token and expert (a NaN would otherwise select an arbitrary expert silently); `-inf` is a
//! valid logit meaning "never route here", but a row with fewer than `k` finite logits is
//! refused the same way. (The sigmoid and softplus methods score a `-inf` logit as exactly 0,
//! as the references do; with a bias such an expert can still be picked, with weight 0.)

mod deepseek;
mod methods;
#[cfg(test)]
mod tests;
mod topk;

use serde::{Deserialize, Serialize};

use crate::error::{MoeError, Result};

/// A routing method with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum RoutingMethod {
    /// `softmax(L)` -> top-k; weights are the raw probabilities (no renormalization).
    Default { top_k: usize },
    /// top-k of the logits -> softmax over the k values (Mixtral; GPT-OSS after its router bias).
    Renormalize { top_k: usize },
    /// softmax -> top-k -> renormalize (Qwen3); the same math as `Renormalize`.
    RenormalizeNaive { top_k: usize },
    /// top-k of the logits -> sigmoid of the k values, no renormalization (Llama4).
    Llama4 { top_k: usize },
    /// DeepSeek-V3 `noaux_tc`: sigmoid scores, biased group selection, renormalized unbiased
    /// weights times `routed_scaling_factor`.
    DeepSeekV3 {
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        routed_scaling_factor: f32,
        /// `e_score_correction_bias` `[E]`; `None` = zeros.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e_score_correction_bias: Option<Vec<f32>>,
        /// Renormalize the selected weights (`norm_topk_prob`); TensorRT-LLM always does.
        #[serde(default = "yes")]
        renormalize: bool,
    },
    /// DeepSeek-V4 without hash routing: `s = sqrt(softplus(L))`, top-k of `s + bias`,
    /// `w = s / sum(s) * routed_scaling_factor`.
    DeepSeekV4 {
        top_k: usize,
        routed_scaling_factor: f32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<Vec<f32>>,
    },
    /// MiniMax-M2: `s = sigmoid(L)`, top-k of `s + bias`, `w = s / (sum + 1e-20) * routed_scaling_factor`
    /// (the factor is 1 for M2 and set by M3).
    MiniMax2 {
        top_k: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<Vec<f32>>,
        #[serde(default = "one")]
        routed_scaling_factor: f32,
    },
    /// MiniMax2 with `s = sqrt(softplus(L))`.
    SqrtSoftplus {
        top_k: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bias: Option<Vec<f32>>,
    },
    /// `s = sigmoid(L)`, top-k of `s`, optionally renormalized (`+1e-20`).
    SigmoidRenorm { top_k: usize, renormalize: bool },
    /// SparseMixer: iterative argmax with the `2 * eps` relative-gap mask.
    SparseMixer { top_k: usize, eps: f32 },
    /// A fixed table: `ids` and optional `scales`, both `[N, k]` row-major.
    Static {
        top_k: usize,
        ids: Vec<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scales: Option<Vec<f32>>,
    },
    /// Benchmark aid: ids cycle through `0..E`, weights 1.
    LoadBalanced { top_k: usize },
}

fn yes() -> bool {
    true
}

fn one() -> f32 {
    1.0
}

/// Routing result on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingOutput {
    pub num_tokens: usize,
    pub top_k: usize,
    /// `[N, k]` expert ids.
    pub ids: Vec<i32>,
    /// `[N, k]` weights; `None` only for a `Static` table without scales.
    pub weights: Option<Vec<f32>>,
}

impl RoutingMethod {
    /// Every method name, in the order of TensorRT-LLM's spec (for matrices and docs).
    pub const NAMES: [&'static str; 12] = [
        "default",
        "renormalize",
        "renormalize_naive",
        "llama4",
        "deep_seek_v3",
        "deep_seek_v4",
        "mini_max2",
        "sqrt_softplus",
        "sigmoid_renorm",
        "sparse_mixer",
        "static",
        "load_balanced",
    ];

    pub fn top_k(&self) -> usize {
        match self {
            RoutingMethod::Default { top_k }
            | RoutingMethod::Renormalize { top_k }
            | RoutingMethod::RenormalizeNaive { top_k }
            | RoutingMethod::Llama4 { top_k }
            | RoutingMethod::DeepSeekV3 { top_k, .. }
            | RoutingMethod::DeepSeekV4 { top_k, .. }
            | RoutingMethod::MiniMax2 { top_k, .. }
            | RoutingMethod::SqrtSoftplus { top_k, .. }
            | RoutingMethod::SigmoidRenorm { top_k, .. }
            | RoutingMethod::SparseMixer { top_k, .. }
            | RoutingMethod::Static { top_k, .. }
            | RoutingMethod::LoadBalanced { top_k } => *top_k,
        }
    }

    /// Snake-case name, as serialized (`deep_seek_v3`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            RoutingMethod::Default { .. } => "default",
            RoutingMethod::Renormalize { .. } => "renormalize",
            RoutingMethod::RenormalizeNaive { .. } => "renormalize_naive",
            RoutingMethod::Llama4 { .. } => "llama4",
            RoutingMethod::DeepSeekV3 { .. } => "deep_seek_v3",
            RoutingMethod::DeepSeekV4 { .. } => "deep_seek_v4",
            RoutingMethod::MiniMax2 { .. } => "mini_max2",
            RoutingMethod::SqrtSoftplus { .. } => "sqrt_softplus",
            RoutingMethod::SigmoidRenorm { .. } => "sigmoid_renorm",
            RoutingMethod::SparseMixer { .. } => "sparse_mixer",
            RoutingMethod::Static { .. } => "static",
            RoutingMethod::LoadBalanced { .. } => "load_balanced",
        }
    }

    /// Checks the parameters against the expert count; errors name the field.
    pub fn validate(&self, num_experts: usize) -> Result<()> {
        let k = self.top_k();
        if k == 0 {
            return Err(MoeError::config("routing.top_k", "must be at least 1"));
        }
        if k > num_experts {
            return Err(MoeError::config(
                "routing.top_k",
                format!("top_k {k} exceeds num_experts {num_experts}"),
            ));
        }
        let check_bias = |field: &str, b: &Option<Vec<f32>>| -> Result<()> {
            if let Some(b) = b {
                if b.len() != num_experts {
                    return Err(MoeError::config(
                        field,
                        format!("has {} entries, expected num_experts = {num_experts}", b.len()),
                    ));
                }
                if let Some(i) = b.iter().position(|v| !v.is_finite()) {
                    return Err(MoeError::NonFinite {
                        what: field.into(),
                        location: format!("expert {i}"),
                    });
                }
            }
            Ok(())
        };
        match self {
            RoutingMethod::DeepSeekV3 {
                n_group,
                topk_group,
                e_score_correction_bias,
                routed_scaling_factor,
                ..
            } => {
                if num_experts.checked_rem(*n_group) != Some(0) {
                    return Err(MoeError::config(
                        "routing.n_group",
                        format!("n_group {n_group} does not divide num_experts {num_experts}"),
                    ));
                }
                if *topk_group == 0 || topk_group > n_group {
                    return Err(MoeError::config(
                        "routing.topk_group",
                        format!("topk_group {topk_group} must be in 1..={n_group}"),
                    ));
                }
                let per_group = num_experts / n_group;
                if *n_group > 1 && per_group < 2 {
                    return Err(MoeError::config(
                        "routing.n_group",
                        format!("groups of {per_group} expert(s) cannot be scored by their top-2"),
                    ));
                }
                if k > topk_group * per_group {
                    return Err(MoeError::config(
                        "routing.top_k",
                        format!(
                            "top_k {k} exceeds the {} experts of {topk_group} selected groups",
                            topk_group * per_group
                        ),
                    ));
                }
                if !routed_scaling_factor.is_finite() {
                    return Err(MoeError::config("routing.routed_scaling_factor", "must be finite"));
                }
                check_bias("routing.e_score_correction_bias", e_score_correction_bias)
            }
            RoutingMethod::DeepSeekV4 {
                bias,
                routed_scaling_factor,
                ..
            }
            | RoutingMethod::MiniMax2 {
                bias,
                routed_scaling_factor,
                ..
            } => {
                if !routed_scaling_factor.is_finite() {
                    return Err(MoeError::config("routing.routed_scaling_factor", "must be finite"));
                }
                check_bias("routing.bias", bias)
            }
            RoutingMethod::SqrtSoftplus { bias, .. } => check_bias("routing.bias", bias),
            RoutingMethod::SparseMixer { eps, .. } => {
                if !(eps.is_finite() && *eps >= 0.0) {
                    return Err(MoeError::config(
                        "routing.eps",
                        format!("must be finite and >= 0, got {eps}"),
                    ));
                }
                Ok(())
            }
            RoutingMethod::Static { ids, scales, .. } => {
                if ids.len() % k != 0 {
                    return Err(MoeError::config(
                        "routing.ids",
                        format!("{} ids do not form rows of top_k {k}", ids.len()),
                    ));
                }
                if let Some(i) = ids.iter().position(|&e| e < 0 || e as usize >= num_experts) {
                    return Err(MoeError::config(
                        "routing.ids",
                        format!("entry {i} = {} is not an expert id", ids[i]),
                    ));
                }
                if let Some(s) = scales.as_ref().filter(|s| s.len() != ids.len()) {
                    return Err(MoeError::config(
                        "routing.scales",
                        format!("{} scales for {} ids", s.len(), ids.len()),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Applies the method to f32 logits `[num_tokens, num_experts]` on the host.
    pub fn apply_host(&self, logits: &[f32], num_tokens: usize, num_experts: usize) -> Result<RoutingOutput> {
        if num_tokens.checked_mul(num_experts) != Some(logits.len()) {
            return Err(MoeError::shape(
                "router_logits",
                format!("[{num_tokens}, {num_experts}]"),
                &[logits.len()],
            ));
        }
        self.validate(num_experts)?;
        methods::apply(self, logits, num_tokens, num_experts)
    }
}
