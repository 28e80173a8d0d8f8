//! Fused expert activations over FC1 output rows.
//!
//! Gated activations read a row as `[up ; gate]` (TensorRT-LLM's `w3_w1` order, each half
//! `inter` wide) and apply the nonlinearity to the second half; `Relu2` is not gated and
//! reads a single half. The output row is `inter` wide either way.

use moe_core::{Activation, MoeError, Result};

/// `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + exp(-x))`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU: `silu(gate) * up`.
#[inline]
pub fn swiglu(up: f32, gate: f32) -> f32 {
    silu(gate) * up
}

/// GPT-OSS clamped SwiGLU: `gate = min(gate, limit)`, `up = clamp(up, -limit, limit)`,
/// `(up + beta) * gate * sigmoid(alpha * gate)`. Only the top of `gate` is clamped, as in
/// the model: large negative gates are already silenced by the sigmoid.
#[inline]
pub fn swiglu_gptoss(up: f32, gate: f32, alpha: f32, beta: f32, limit: f32) -> f32 {
    let gate = gate.min(limit);
    let up = up.clamp(-limit, limit);
    (up + beta) * gate * sigmoid(alpha * gate)
}

/// `relu(x)^2`.
#[inline]
pub fn relu2(x: f32) -> f32 {
    let r = x.max(0.0);
    r * r
}

/// Applies `activation` to `rows` FC1 rows of `fc1` (`[rows, expand * inter]`), writing
/// `out` (`[rows, inter]`).
pub fn apply_rows(activation: Activation, fc1: &[f32], out: &mut [f32], rows: usize, inter: usize) -> Result<()> {
    let width = activation.expand_ratio() * inter;
    if fc1.len() < rows * width || out.len() < rows * inter {
        return Err(MoeError::shape(
            "activation buffers",
            format!("[{rows}, {width}] in and [{rows}, {inter}] out"),
            &[fc1.len(), out.len()],
        ));
    }
    if inter == 0 {
        return Ok(());
    }
    let pairs = fc1.chunks_exact(width).zip(out.chunks_exact_mut(inter)).take(rows);
    match activation {
        Activation::Swiglu => {
            for (src, dst) in pairs {
                let (up, gate) = src.split_at(inter);
                for ((d, &u), &g) in dst.iter_mut().zip(up).zip(gate) {
                    *d = swiglu(u, g);
                }
            }
        }
        Activation::SwigluGptOss { alpha, beta, limit } => {
            for (src, dst) in pairs {
                let (up, gate) = src.split_at(inter);
                for ((d, &u), &g) in dst.iter_mut().zip(up).zip(gate) {
                    *d = swiglu_gptoss(u, g, alpha, beta, limit);
                }
            }
        }
        Activation::Relu2 => {
            for (src, dst) in pairs {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = relu2(x);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_reads_up_then_gate() {
        // One row, inter = 2: up = [1, 2], gate = [0, 3].
        let mut out = [0.0; 2];
        apply_rows(Activation::Swiglu, &[1., 2., 0., 3.], &mut out, 1, 2).unwrap();
        assert_eq!(out[0], 0.0); // silu(0) * 1
        assert!((out[1] - 2.0 * 3.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn gptoss_clamps_gate_from_above_and_up_both_ways() {
        let (alpha, beta, limit) = (1.702, 1.0, 7.0);
        let act = Activation::SwigluGptOss { alpha, beta, limit };
        let mut out = [0.0; 2];
        // up = [100, -100] -> [7, -7]; gate = [50, -2] -> [7, -2].
        apply_rows(act, &[100., -100., 50., -2.], &mut out, 1, 2).unwrap();
        assert!((out[0] - 8.0 * 7.0 * sigmoid(1.702 * 7.0)).abs() < 1e-5);
        assert!((out[1] - (-6.0) * (-2.0) * sigmoid(1.702 * -2.0)).abs() < 1e-5);
    }

    #[test]
    fn relu2_is_not_gated() {
        let mut out = [0.0; 4];
        apply_rows(Activation::Relu2, &[-1., 2., 0.5, -0.0], &mut out, 2, 2).unwrap();
        assert_eq!(out, [0.0, 4.0, 0.25, 0.0]);
        assert!(apply_rows(Activation::Swiglu, &[0.0; 3], &mut out, 1, 2).is_err());
    }
}
