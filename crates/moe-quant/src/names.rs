//! Names of the tensors quant methods create. Per-slot tensors are `[num_local_slots, ...]`
//! (registered for EPLB migration); layer tensors are one per layer (never migrated).
//!
//! Per-slot tensors are named `{fc}_{suffix}` with `fc` = `w3_w1` (fused FC1, rows
//! `[w3 (up) ; w1 (gate)]`) or `w2` (FC2), so each format's checkpoint suffix maps onto one name.

/// Fused FC1 weight `[S, expand * I_pp, H]` (packed formats: `H / 2` bytes), rows `[w3 (up) ; w1 (gate)]`.
pub const W3_W1_WEIGHT: &str = "w3_w1_weight";
/// FC2 weight `[S, H, I_pp]` (packed formats: `I_pp / 2` bytes).
pub const W2_WEIGHT: &str = "w2_weight";
/// Fused FC1 bias `[S, expand * I_pp]`, same `[w3 ; w1]` order.
pub const W3_W1_BIAS: &str = "w3_w1_bias";
/// FC2 bias `[S, H]`.
pub const W2_BIAS: &str = "w2_bias";

/// FC1 weight scales: per tensor `[S]` (FP8, common to both halves), per block (FP8 block,
/// NVFP4, MXFP4), per group (INT4) or per row (INT8).
pub const W3_W1_WEIGHT_SCALE: &str = "w3_w1_weight_scale";
/// FC2 weight scales (see [`W3_W1_WEIGHT_SCALE`]).
pub const W2_WEIGHT_SCALE: &str = "w2_weight_scale";
/// INT4 zero points of FC1 `[S, expand * I_pp, H / group]`.
pub const W3_W1_WEIGHT_ZERO: &str = "w3_w1_weight_zero";
/// INT4 zero points of FC2 `[S, H, I_pp / group]`.
pub const W2_WEIGHT_ZERO: &str = "w2_weight_zero";
/// NVFP4 per-tensor weight scale of FC1 `[S]` (`weight_scale_2`, the larger of w1/w3).
pub const W3_W1_WEIGHT_SCALE_2: &str = "w3_w1_weight_scale_2";
/// NVFP4 per-tensor weight scale of FC2 `[S]`.
pub const W2_WEIGHT_SCALE_2: &str = "w2_weight_scale_2";

/// NVFP4 FC1 output factor `[S]`: `weight_scale_2 / fc31_input_scale` (TensorRT-LLM's `fc31_alpha`).
pub const FC31_ALPHA: &str = "fc31_alpha";
/// NVFP4 FC2 output factor `[S]`.
pub const FC2_ALPHA: &str = "fc2_alpha";
/// FP8 per-tensor FC1 output factor `[S]`: `weight_scale * fc31_input_dequant`.
pub const FC31_DEQUANT: &str = "fc31_dequant";
/// FP8 per-tensor FC2 output factor `[S]`.
pub const FC2_DEQUANT: &str = "fc2_dequant";

/// Layer `[1]`: NVFP4 FC1 activation global quantization scale, `1 / max input_scale`.
pub const FC31_INPUT_SCALE: &str = "fc31_input_scale";
/// Layer `[1]`: NVFP4 FC2 activation global quantization scale.
pub const FC2_INPUT_SCALE: &str = "fc2_input_scale";
/// Layer `[1]`: FP8 per-tensor FC1 activation dequant scale, `max input_scale`.
pub const FC31_INPUT_DEQUANT: &str = "fc31_input_dequant";
/// Layer `[1]`: FP8 per-tensor FC2 activation dequant scale.
pub const FC2_INPUT_DEQUANT: &str = "fc2_input_dequant";
/// Layer `[E]`: every expert's FC1 input scale as read from the checkpoint (NaN until read),
/// kept so the maximum over ALL experts can be taken once loading is complete.
pub const FC31_EXPERT_INPUT_SCALES: &str = "fc31_expert_input_scales";
/// Layer `[E]`: every expert's FC2 input scale (see [`FC31_EXPERT_INPUT_SCALES`]).
pub const FC2_EXPERT_INPUT_SCALES: &str = "fc2_expert_input_scales";
