//! Typed views of a layer's per-slot tensors (`w3_w1_weight`, `w2_weight`, biases), cut into
//! one [`ExpertView`] per local slot.

use moe_core::{ExpertWeights, LayerLayout, Result};
use moe_kernels::cpu::expert_mlp::{ExpertView, MlpDims};
use moe_kernels::cpu::float_slice::FloatSlice;
use moe_quant::names::{W2_BIAS, W2_WEIGHT, W3_W1_BIAS, W3_W1_WEIGHT};

/// Borrowed per-slot tensors of an unquantized layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerViews<'a> {
    w3_w1: FloatSlice<'a>,
    w3_w1_bias: Option<FloatSlice<'a>>,
    w2: FloatSlice<'a>,
    w2_bias: Option<FloatSlice<'a>>,
    pub dims: MlpDims,
}

impl<'a> LayerViews<'a> {
    pub fn new(weights: &'a ExpertWeights, layout: &LayerLayout) -> Result<Self> {
        let view = |name: &str| FloatSlice::from_tensor(weights.get(name)?, name);
        let bias = |name: &str| if layout.bias { view(name).map(Some) } else { Ok(None) };
        Ok(LayerViews {
            w3_w1: view(W3_W1_WEIGHT)?,
            w3_w1_bias: bias(W3_W1_BIAS)?,
            w2: view(W2_WEIGHT)?,
            w2_bias: bias(W2_BIAS)?,
            dims: MlpDims {
                hidden: layout.hidden_size,
                inter: layout.intermediate_per_partition,
                activation: layout.activation,
            },
        })
    }

    /// The weights of local slot `slot`.
    pub fn slot(&self, slot: usize) -> Result<ExpertView<'a>> {
        let MlpDims { hidden, inter, .. } = self.dims;
        let fc1 = self.dims.fc1_rows();
        Ok(ExpertView {
            w3_w1: self.w3_w1.chunk(W3_W1_WEIGHT, slot, fc1 * hidden)?,
            w3_w1_bias: self.w3_w1_bias.map(|b| b.chunk(W3_W1_BIAS, slot, fc1)).transpose()?,
            w2: self.w2.chunk(W2_WEIGHT, slot, hidden * inter)?,
            w2_bias: self.w2_bias.map(|b| b.chunk(W2_BIAS, slot, hidden)).transpose()?,
        })
    }
}
