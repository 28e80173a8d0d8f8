//! What the host backends need of a quant method beyond the `moe_core::QuantMethod` contract:
//! the kernel view of one slot. (The contract lives in `moe-core`, which knows no kernel
//! types; this trait adds the `moe-kernels` view on top of it.)

use moe_core::{ExpertWeights, LayerLayout, QuantMethod, Result};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::expert_mlp::ExpertView;

/// A quant method the host backends can run: every method of this crate.
pub trait HostQuantMethod: QuantMethod {
    /// Local slot `slot` as the host kernels read it: weights as float or quantized matrices
    /// (borrowed from `weights`, never dequantized), biases, and the activation quantization
    /// of both GEMM inputs. Call it after `process_weights_after_loading`.
    fn expert_view<'a>(&self, weights: &'a ExpertWeights, layout: &LayerLayout, slot: usize) -> Result<ExpertView<'a>>;

    /// How the FC1 input (the dispatched activations) is quantized: a layer-level fact, known
    /// on a rank that hosts no slot too. Call it after `process_weights_after_loading`.
    fn input_quant(&self, weights: &ExpertWeights) -> Result<ActQuant>;
}
