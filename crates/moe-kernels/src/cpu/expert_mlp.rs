//! One expert's MLP over a block of its gathered rows: FC1 (`w3_w1`) GEMM, bias, the fused
//! activation right after, FC2 (`w2`) GEMM, bias. This is the unit of work the grouped CPU
//! backend schedules per (expert, row block).
//!
//! Quantized formats enter in two places: the weights ([`WeightSlice`], decoded block by block
//! inside the GEMM) and the GEMM inputs, which are quantize-dequantized as the format
//! prescribes ([`ActQuant`]) right before each GEMM: the gathered rows before FC1, the
//! activation output before FC2.

use moe_core::{Activation, MoeError, Result};

use super::act_quant::{ActQuant, qdq_rows};
use super::activation::apply_rows;
use super::float_slice::FloatSlice;
use super::gemm::{GemmScratch, matmul_bt};
use super::weight_slice::WeightSlice;

/// The weights of one local slot, in their stored dtype or format, and how the format
/// quantizes the inputs of its two GEMMs.
#[derive(Clone, Copy, Debug)]
pub struct ExpertView<'a> {
    /// `[expand * inter, hidden]`, rows `[up ; gate]`.
    pub w3_w1: WeightSlice<'a>,
    /// `[expand * inter]`.
    pub w3_w1_bias: Option<FloatSlice<'a>>,
    /// `[hidden, inter]`.
    pub w2: WeightSlice<'a>,
    /// `[hidden]`.
    pub w2_bias: Option<FloatSlice<'a>>,
    /// Quantization of the FC1 input rows.
    pub fc1_input: ActQuant,
    /// Quantization of the activation output (the FC2 input).
    pub fc2_input: ActQuant,
}

/// Sizes of the expert MLP on this rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlpDims {
    pub hidden: usize,
    /// Intermediate channels on this TP rank (`I_pp`).
    pub inter: usize,
    pub activation: Activation,
}

impl MlpDims {
    /// Rows of FC1 (`expand * inter`).
    pub fn fc1_rows(&self) -> usize {
        self.activation.expand_ratio() * self.inter
    }
}

/// Reusable buffers of [`expert_mlp`]; keep one per concurrent worker.
#[derive(Debug, Default)]
pub struct MlpScratch {
    /// Quantize-dequantized copy of the input rows (only when FC1's input is quantized).
    xq: Vec<f32>,
    fc1: Vec<f32>,
    act: Vec<f32>,
    bias: Vec<f32>,
    gemm: GemmScratch,
}

/// `out[r] = FC2(act(FC1(x[r])))` for the `rows` rows of `x` (`[rows, hidden]` f32), writing
/// `out` (`[rows, hidden]` f32). `threads` is handed to the GEMMs (see [`super::gemm`]). `x` is
/// not modified: a quantized FC1 input is rounded in a copy.
pub fn expert_mlp(
    x: &[f32],
    rows: usize,
    w: &ExpertView<'_>,
    dims: MlpDims,
    out: &mut [f32],
    scratch: &mut MlpScratch,
    threads: usize,
) -> Result<()> {
    let MlpDims {
        hidden,
        inter,
        activation,
    } = dims;
    let fc1_rows = dims.fc1_rows();
    let MlpScratch {
        xq,
        fc1,
        act,
        bias,
        gemm,
    } = scratch;
    fc1.resize(rows * fc1_rows, 0.0);
    act.resize(rows * inter, 0.0);

    let x: &[f32] = if w.fc1_input.is_none() {
        x
    } else {
        let n = rows * hidden;
        let src = x
            .get(..n)
            .ok_or_else(|| MoeError::shape("expert input rows", format!("{n} elements"), &[x.len()]))?;
        xq.clear();
        xq.extend_from_slice(src);
        qdq_rows(&w.fc1_input, xq, hidden)?;
        xq
    };
    matmul_bt(x, w.w3_w1, fc1, rows, fc1_rows, hidden, threads, gemm)?;
    if let Some(b) = w.w3_w1_bias {
        add_bias(fc1, b, fc1_rows, bias, "w3_w1_bias")?;
    }
    apply_rows(activation, fc1, act, rows, inter)?;
    qdq_rows(&w.fc2_input, act, inter)?;
    matmul_bt(act, w.w2, out, rows, hidden, inter, threads, gemm)?;
    if let Some(b) = w.w2_bias {
        add_bias(&mut out[..rows * hidden], b, hidden, bias, "w2_bias")?;
    }
    Ok(())
}

/// Adds the `width`-long `bias` to every row of `m`; the bias is widened once into `tmp`.
fn add_bias(m: &mut [f32], bias: FloatSlice<'_>, width: usize, tmp: &mut Vec<f32>, what: &str) -> Result<()> {
    if bias.len() != width {
        return Err(MoeError::shape(what, format!("[{width}]"), &[bias.len()]));
    }
    if width == 0 {
        return Ok(());
    }
    tmp.resize(width, 0.0);
    bias.widen_into(0, tmp)?;
    for row in m.chunks_exact_mut(width) {
        for (v, &b) in row.iter_mut().zip(tmp.iter()) {
            *v += b;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu2_mlp_by_hand() {
        // hidden = 2, inter = 1: fc1 = [1, -1] . x + 0.5, act = relu(fc1)^2,
        // out = [2, 3] * act + [0, 1].
        // x = [3, 1]: fc1 = 2.5, act = 6.25, out = [12.5, 19.75].
        // x = [0, 1]: fc1 = -0.5, act = 0, out = [0, 1].
        let w = ExpertView {
            w3_w1: FloatSlice::F32(&[1., -1.]).into(),
            w3_w1_bias: Some(FloatSlice::F32(&[0.5])),
            w2: FloatSlice::F32(&[2., 3.]).into(),
            w2_bias: Some(FloatSlice::F32(&[0., 1.])),
            fc1_input: ActQuant::None,
            fc2_input: ActQuant::None,
        };
        let dims = MlpDims {
            hidden: 2,
            inter: 1,
            activation: Activation::Relu2,
        };
        let mut out = [0.0; 4];
        expert_mlp(&[3., 1., 0., 1.], 2, &w, dims, &mut out, &mut MlpScratch::default(), 1).unwrap();
        assert_eq!(out, [12.5, 19.75, 0., 1.]);
    }

    #[test]
    fn wrong_bias_length_is_a_shape_error() {
        let w = ExpertView {
            w3_w1: FloatSlice::F32(&[1., -1.]).into(),
            w3_w1_bias: Some(FloatSlice::F32(&[0.5, 1.0])),
            w2: FloatSlice::F32(&[2., 3.]).into(),
            w2_bias: None,
            fc1_input: ActQuant::None,
            fc2_input: ActQuant::None,
        };
        let dims = MlpDims {
            hidden: 2,
            inter: 1,
            activation: Activation::Relu2,
        };
        let r = expert_mlp(&[3., 1.], 1, &w, dims, &mut [0.0; 2], &mut MlpScratch::default(), 1);
        assert!(matches!(r, Err(MoeError::ShapeMismatch { .. })));
    }

    #[test]
    fn quantized_inputs_are_rounded_before_each_gemm_and_x_is_untouched() {
        // hidden = 2, inter = 1, Relu2, FP8 per-tensor inputs with scale 1/8:
        // x = [1.3, 0] -> 1.3 * 8 = 10.4 -> e4m3 10 (spacing 1 in [8, 16)) -> 1.25.
        // fc1 = 1.25, act = 1.5625 -> * 8 = 12.5 -> ties to even 12 -> 1.5; out = [2, 3] * 1.5.
        let w = ExpertView {
            w3_w1: FloatSlice::F32(&[1., 0.]).into(),
            w3_w1_bias: None,
            w2: FloatSlice::F32(&[2., 3.]).into(),
            w2_bias: None,
            fc1_input: ActQuant::Fp8PerTensor { scale: 0.125 },
            fc2_input: ActQuant::Fp8PerTensor { scale: 0.125 },
        };
        let dims = MlpDims {
            hidden: 2,
            inter: 1,
            activation: Activation::Relu2,
        };
        let x = [1.3f32, 0.0];
        let mut out = [0.0; 2];
        expert_mlp(&x, 1, &w, dims, &mut out, &mut MlpScratch::default(), 1).unwrap();
        assert_eq!(out, [3.0, 4.5]);
        assert_eq!(x, [1.3, 0.0]);
    }
}
