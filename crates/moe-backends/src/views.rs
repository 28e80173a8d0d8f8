//! The per-slot kernel views of a layer, cut by its quant method: float or quantized weight
//! matrices borrowed from the per-slot tensors (never dequantized as a whole), biases, and the
//! activation quantization of both GEMM inputs. The per-format view construction lives next to
//! each method in `moe-quant` (`HostQuantMethod::expert_view`); this is the backends' handle.

use moe_core::{ExpertWeights, LayerLayout, Result};
use moe_kernels::cpu::expert_mlp::{ExpertView, MlpDims};
use moe_quant::HostQuantMethod;

use crate::lifecycle::ExpertLayer;

/// Borrowed per-slot tensors of one layer, with the method that reads them.
#[derive(Clone, Copy)]
pub(crate) struct LayerViews<'a> {
    method: &'a dyn HostQuantMethod,
    weights: &'a ExpertWeights,
    layout: &'a LayerLayout,
    pub dims: MlpDims,
}

impl<'a> LayerViews<'a> {
    pub fn new(layer: &'a ExpertLayer) -> Self {
        let layout = &layer.layout;
        LayerViews {
            method: layer.quant.as_ref(),
            weights: &layer.weights,
            layout,
            dims: MlpDims {
                hidden: layout.hidden_size,
                inter: layout.intermediate_per_partition,
                activation: layout.activation,
            },
        }
    }

    /// The weights of local slot `slot`.
    pub fn slot(&self, slot: usize) -> Result<ExpertView<'a>> {
        self.method.expert_view(self.weights, self.layout, slot)
    }
}
