//! Names of the per-slot tensors quant methods create (each `[num_local_slots, ...]`).

/// Fused FC1 weight `[S, expand * I_pp, H]`, rows `[w3 (up) ; w1 (gate)]`.
pub const W3_W1_WEIGHT: &str = "w3_w1_weight";
/// FC2 weight `[S, H, I_pp]`.
pub const W2_WEIGHT: &str = "w2_weight";
/// Fused FC1 bias `[S, expand * I_pp]`, same `[w3 ; w1]` order.
pub const W3_W1_BIAS: &str = "w3_w1_bias";
/// FC2 bias `[S, H]`.
pub const W2_BIAS: &str = "w2_bias";
