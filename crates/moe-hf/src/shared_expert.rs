//! Shared experts: a dense SwiGLU MLP every token passes through, added to the routed output.
//! Qwen2-MoE scales it by `sigmoid(shared_expert_gate(x))`; DeepSeek-V3 and Llama 4 do not.

use moe_core::{DType, MoeError, Result, Tensor};

use crate::checkpoint::Checkpoint;
use crate::dequant::load_dense;
use crate::names::SharedNames;
use crate::numerics::{linear_rounded, round_to, sigmoid, silu};
use crate::quant_format::CheckpointQuant;
use crate::router::load_float;

/// A shared expert: `down(silu(gate(x)) * up(x))`, optionally times `sigmoid(x @ g^T)`.
#[derive(Clone, Debug)]
pub struct SharedExpert {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    /// Qwen2-MoE's `shared_expert_gate.weight` `[1, H]`.
    out_gate: Option<Tensor>,
    dtype: DType,
}

impl SharedExpert {
    /// Loads the shared expert under `prefix` + `names.module` with intermediate size `inter`
    /// (from the config; the checkpoint must agree). Weights quantized in the checkpoint's
    /// `format` (DeepSeek FP8 checkpoints quantize the shared experts too) are dequantized to
    /// `dtype` here, once: see [`load_dense`].
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        names: &SharedNames,
        hidden: usize,
        inter: usize,
        dtype: DType,
        format: CheckpointQuant,
    ) -> Result<SharedExpert> {
        let n = |rel: &str| format!("{prefix}{}{rel}", names.module);
        Ok(SharedExpert {
            gate: load_dense(ckpt, format, &n("gate_proj.weight"), [inter, hidden], dtype)?,
            up: load_dense(ckpt, format, &n("up_proj.weight"), [inter, hidden], dtype)?,
            down: load_dense(ckpt, format, &n("down_proj.weight"), [hidden, inter], dtype)?,
            out_gate: names
                .gate
                .map(|g| load_float(ckpt, &format!("{prefix}{g}"), &[1, hidden], dtype))
                .transpose()?,
            dtype,
        })
    }

    /// Intermediate size of the shared MLP.
    pub fn intermediate_size(&self) -> usize {
        self.gate.rows()
    }

    /// The shared output `[T, H]` as f32 values rounded to the block dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<f32>> {
        let dt = self.dtype;
        let t = x.rows();
        let inter = self.intermediate_size();
        let g = linear_rounded(x, &self.gate, None, dt)?;
        let u = linear_rounded(x, &self.up, None, dt)?;
        // act_fn(gate) is its own op (rounded), then the product (rounded).
        let mut a: Vec<f32> = g.iter().map(|&v| silu(v)).collect();
        round_to(dt, &mut a);
        a.iter_mut().zip(&u).for_each(|(a, &u)| *a *= u);
        round_to(dt, &mut a);
        let mid = Tensor::from_f32_as(dt, vec![t, inter], &a)?;
        let mut out = linear_rounded(&mid, &self.down, None, dt)?;
        if let Some(gw) = &self.out_gate {
            let mut s = linear_rounded(x, gw, None, dt)?;
            s.iter_mut().for_each(|v| *v = sigmoid(*v));
            round_to(dt, &mut s);
            let h = self.down.rows();
            if s.len() != t {
                return Err(MoeError::shape(
                    "shared_expert_gate output",
                    format!("[{t}, 1]"),
                    &[s.len()],
                ));
            }
            for (row, &sv) in out.chunks_mut(h.max(1)).zip(&s) {
                row.iter_mut().for_each(|v| *v *= sv);
            }
            round_to(dt, &mut out);
        }
        Ok(out)
    }
}
