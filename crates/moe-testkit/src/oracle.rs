//! The naive oracle: the MoE layer written as the math reads, in f64, with no fusion, no
//! permutation and no chunking. It checks the reference backend itself (which every other
//! cell is compared against), so a bug shared by all backends cannot hide behind agreement.
//!
//! Quantized cells see the weights their checkpoint tensors decode to, and their GEMM inputs
//! go through the format's activation quantize-dequantize (`moe_kernels::cpu::act_quant`,
//! the codec step that defines the format), as TensorRT-LLM's reference modules do.
//!
//! Routing is `RoutingMethod::apply_host`, the one specification of the routing math in
//! `moe-core` (its own tests pin it to TensorRT-LLM's vectors).

use moe_core::{Activation, MoeConfig, MoeError, Result};
use moe_kernels::cpu::act_quant::{ActQuant, qdq_rows};

use crate::data::LayerData;

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `W [rows, cols] @ v [cols] (+ b)`.
pub(crate) fn matvec(w: &[f32], rows: usize, cols: usize, v: &[f64], b: Option<&[f32]>) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            let dot: f64 = row.iter().zip(v).map(|(&a, &x)| f64::from(a) * x).sum();
            dot + b.map_or(0.0, |b| f64::from(b[r]))
        })
        .collect()
}

/// `activation(gate, up)` per channel.
pub(crate) fn activate(activation: Activation, gate: &[f64], up: Option<&[f64]>) -> Result<Vec<f64>> {
    Ok(match (activation, up) {
        (Activation::Relu2, _) => gate.iter().map(|&g| g.max(0.0).powi(2)).collect(),
        (Activation::Swiglu, Some(up)) => gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect(),
        (Activation::SwigluGptOss { alpha, beta, limit }, Some(up)) => {
            let (alpha, beta, limit) = (f64::from(alpha), f64::from(beta), f64::from(limit));
            gate.iter()
                .zip(up)
                .map(|(&g, &u)| {
                    let g = g.min(limit);
                    let u = u.clamp(-limit, limit);
                    (u + beta) * g * sigmoid(alpha * g)
                })
                .collect()
        }
        (a, None) => {
            return Err(MoeError::config(
                "activation",
                format!("{} needs an up projection", a.name()),
            ));
        }
    })
}

/// A GEMM input as the format's activation quantization leaves it (the codec step of the
/// format's definition; the identity for 16/32-bit activations).
fn qdq(q: &ActQuant, v: &[f64]) -> Result<Vec<f64>> {
    if q.is_none() {
        return Ok(v.to_vec());
    }
    let mut row: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let cols = row.len();
    qdq_rows(q, &mut row, cols)?;
    Ok(row.into_iter().map(f64::from).collect())
}

/// The layer output `[T, H]` for `config` on `data`, as f32.
pub fn naive_moe(config: &MoeConfig, data: &LayerData) -> Result<Vec<f32>> {
    let (e, h, i, t) = (
        config.num_experts,
        config.hidden_size,
        config.intermediate_size,
        data.num_tokens,
    );
    let k = config.top_k();
    let routed = config.routing.apply_host(&data.logits_f32, t, e)?;
    let mut y = vec![0.0f64; t * h];
    for tok in 0..t {
        let x: Vec<f64> = data.x_f32[tok * h..(tok + 1) * h]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        for j in 0..k {
            let id = routed.ids[tok * k + j];
            let expert = usize::try_from(id)
                .ok()
                .and_then(|id| data.experts.get(id))
                .ok_or_else(|| MoeError::config("routing", format!("token {tok} routed to expert {id} of {e}")))?;
            let w = routed.weights.as_ref().map_or(1.0, |w| f64::from(w[tok * k + j]));
            let (x_in, out_weight) = if config.apply_router_weight_on_input {
                (x.iter().map(|v| v * w).collect::<Vec<_>>(), 1.0)
            } else {
                (x.clone(), w)
            };
            let x_in = qdq(&data.act_quant[0], &x_in)?;
            let gate = matvec(&expert.w1, i, h, &x_in, expert.b1.as_deref());
            let up = expert
                .w3
                .as_ref()
                .map(|w3| matvec(w3, i, h, &x_in, expert.b3.as_deref()));
            let act = qdq(&data.act_quant[1], &activate(config.activation, &gate, up.as_deref())?)?;
            let down = matvec(&expert.w2, h, i, &act, expert.b2.as_deref());
            for (acc, d) in y[tok * h..(tok + 1) * h].iter_mut().zip(down) {
                *acc += out_weight * d;
            }
        }
    }
    Ok(y.into_iter().map(|v| v as f32).collect())
}
