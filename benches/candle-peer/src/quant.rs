//! 4-bit experts for the peer (`--q4 q4_0|q4k`): candle's quantized matmul (`QMatMul` over a
//! GGUF `Q4_0` or `Q4K` `QTensor`), one per projection and expert, as candle-transformers'
//! quantized MoE models hold them (`quantized_llama`'s `MlpOrMoe::MoE`: a `Vec` of per-expert
//! `Mlp`s of three `QMatMul`s, run in the same routing loop as the dense block).
//!
//! The weights are not the cache's: candle reads no AWQ, NVFP4 or MXFP4 tensors, and a GGUF
//! 4-bit tensor is made by quantizing floats. Each projection is random f32 (deterministic,
//! uniform in `[-0.05, 0.05)`) quantized once at load with `QTensor::quantize`; the shapes, the
//! expert count, top-k, the inputs and the router logits are the cache's, so the same experts
//! are selected and the same bytes per expert are read as by a 4-bit `moe bench` row of that
//! cache (Q4_0: 18 bytes per 32 weights; Q4K: 144 per 256, both 4.5 bits a weight).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

/// The GGUF type named by `--q4`.
pub fn dtype(name: &str) -> std::result::Result<GgmlDType, String> {
    match name {
        "q4_0" => Ok(GgmlDType::Q4_0),
        "q4k" => Ok(GgmlDType::Q4K),
        other => Err(format!("--q4 takes q4_0 or q4k, not `{other}`")),
    }
}

/// A `[rows, cols]` projection of deterministic random floats, quantized to `dtype`.
fn projection(rows: usize, cols: usize, dtype: GgmlDType, seed: u64) -> Result<QMatMul> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
    QMatMul::from_qtensor(QTensor::quantize(&t, dtype)?)
}

/// One expert as `quantized_llama::Mlp`: `w2(silu(w1(x)) * w3(x))`.
pub struct QExpert {
    w1: QMatMul,
    w2: QMatMul,
    w3: QMatMul,
}

impl QExpert {
    /// Expert `e` of a block of `hidden x inter` experts.
    pub fn new(e: usize, hidden: usize, inter: usize, dtype: GgmlDType) -> Result<QExpert> {
        let seed = 3 * e as u64;
        Ok(QExpert {
            w1: projection(inter, hidden, dtype, seed)?,
            w2: projection(hidden, inter, dtype, seed + 1)?,
            w3: projection(inter, hidden, dtype, seed + 2)?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let lhs = self.w1.forward(xs)?.silu()?;
        let rhs = self.w3.forward(xs)?;
        self.w2.forward(&(lhs * rhs)?)
    }
}
