//! One expert's MLP over a block of its gathered rows: FC1 (`w3_w1`) GEMM, bias, the fused
//! activation right after, FC2 (`w2`) GEMM, bias. This is the unit of work the grouped CPU
//! backend schedules per (expert, row block).

use moe_core::{Activation, MoeError, Result};

use super::activation::apply_rows;
use super::float_slice::FloatSlice;
use super::gemm::{matmul_bt, GemmScratch};

/// The weights of one local slot, in their stored dtype.
#[derive(Clone, Copy, Debug)]
pub struct ExpertView<'a> {
    /// `[expand * inter, hidden]`, rows `[up ; gate]`.
    pub w3_w1: FloatSlice<'a>,
    /// `[expand * inter]`.
    pub w3_w1_bias: Option<FloatSlice<'a>>,
    /// `[hidden, inter]`.
    pub w2: FloatSlice<'a>,
    /// `[hidden]`.
    pub w2_bias: Option<FloatSlice<'a>>,
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
    fc1: Vec<f32>,
    act: Vec<f32>,
    bias: Vec<f32>,
    gemm: GemmScratch,
}

/// `out[r] = FC2(act(FC1(x[r])))` for the `rows` rows of `x` (`[rows, hidden]` f32), writing
/// `out` (`[rows, hidden]` f32). `threads` is handed to the GEMMs (see [`super::gemm`]).
pub fn expert_mlp(
    x: &[f32],
    rows: usize,
    w: &ExpertView<'_>,
    dims: MlpDims,
    out: &mut [f32],
    scratch: &mut MlpScratch,
    threads: usize,
) -> Result<()> {
    let MlpDims { hidden, inter, activation } = dims;
    let fc1_rows = dims.fc1_rows();
    scratch.fc1.resize(rows * fc1_rows, 0.0);
    scratch.act.resize(rows * inter, 0.0);

    matmul_bt(x, w.w3_w1, &mut scratch.fc1, rows, fc1_rows, hidden, threads, &mut scratch.gemm)?;
    if let Some(b) = w.w3_w1_bias {
        add_bias(&mut scratch.fc1, b, fc1_rows, &mut scratch.bias, "w3_w1_bias")?;
    }
    apply_rows(activation, &scratch.fc1, &mut scratch.act, rows, inter)?;
    matmul_bt(&scratch.act, w.w2, out, rows, hidden, inter, threads, &mut scratch.gemm)?;
    if let Some(b) = w.w2_bias {
        add_bias(&mut out[..rows * hidden], b, hidden, &mut scratch.bias, "w2_bias")?;
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
            w3_w1: FloatSlice::F32(&[1., -1.]),
            w3_w1_bias: Some(FloatSlice::F32(&[0.5])),
            w2: FloatSlice::F32(&[2., 3.]),
            w2_bias: Some(FloatSlice::F32(&[0., 1.])),
        };
        let dims = MlpDims { hidden: 2, inter: 1, activation: Activation::Relu2 };
        let mut out = [0.0; 4];
        expert_mlp(&[3., 1., 0., 1.], 2, &w, dims, &mut out, &mut MlpScratch::default(), 1).unwrap();
        assert_eq!(out, [12.5, 19.75, 0., 1.]);
    }

    #[test]
    fn wrong_bias_length_is_a_shape_error() {
        let w = ExpertView {
            w3_w1: FloatSlice::F32(&[1., -1.]),
            w3_w1_bias: Some(FloatSlice::F32(&[0.5, 1.0])),
            w2: FloatSlice::F32(&[2., 3.]),
            w2_bias: None,
        };
        let dims = MlpDims { hidden: 2, inter: 1, activation: Activation::Relu2 };
        let r = expert_mlp(&[3., 1.], 1, &w, dims, &mut [0.0; 2], &mut MlpScratch::default(), 1);
        assert!(matches!(r, Err(MoeError::ShapeMismatch { .. })));
    }
}
