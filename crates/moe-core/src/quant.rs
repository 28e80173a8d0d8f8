//! The quantization-method contract (TensorRT-LLM's `FusedMoEMethod`): a quant method, chosen
//! by a backend, owns the per-slot tensor layout of the experts, checkpoint loading (with TP
//! sharding), post-load transforms, scale folding, activation quantization and the
//! registration of every per-expert tensor for EPLB migration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backend::QuantizedInput;
use crate::config::{Activation, MoeConfig, QuantAlgo};
use crate::dtype::DType;
use crate::error::Result;
use crate::partition::ExpertPartition;
use crate::problem::EplbSupportStatus;
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// Geometry a quant method lays its tensors out for (one rank's share of one layer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerLayout {
    pub num_experts: usize,
    pub hidden_size: usize,
    /// Global intermediate size of one expert.
    pub intermediate_size: usize,
    /// Intermediate channels on this TP rank.
    pub intermediate_per_partition: usize,
    pub tp_rank: usize,
    pub tp_size: usize,
    pub activation: Activation,
    pub bias: bool,
    /// Activation dtype (and dtype of unquantized weights).
    pub dtype: DType,
    /// Expert served by each local slot.
    pub local_expert_ids: Vec<usize>,
}

impl LayerLayout {
    pub fn new(config: &MoeConfig, partition: &ExpertPartition) -> Self {
        LayerLayout {
            num_experts: config.num_experts,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            intermediate_per_partition: config.intermediate_size_per_partition(),
            tp_rank: config.parallel.tp_rank,
            tp_size: config.parallel.tp_size,
            activation: config.activation,
            bias: config.bias,
            dtype: config.dtype,
            local_expert_ids: partition.initial_local_expert_ids().to_vec(),
        }
    }

    pub fn num_local_slots(&self) -> usize {
        self.local_expert_ids.len()
    }

    /// Rows of the fused FC1 per slot (`expand * I_pp`).
    pub fn fc1_rows(&self) -> usize {
        self.activation.expand_ratio() * self.intermediate_per_partition
    }
}

/// A per-expert tensor registered for EPLB migration: every slot's bytes of `name` move with
/// the expert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertTensorRegistration {
    pub name: String,
    pub dtype: DType,
    /// Shape of one slot's share (the tensor is `[num_local_slots, ..per_slot_shape]`).
    pub per_slot_shape: Vec<usize>,
}

/// The tensors of one layer's local slots, each `[num_local_slots, ...]`, by name
/// (`w3_w1_weight`, `w2_weight`, biases, scales).
#[derive(Clone, Debug, Default)]
pub struct ExpertWeights {
    pub tensors: BTreeMap<String, Tensor>,
    /// Per local slot: loaded from a source since `create_weights`.
    pub loaded: Vec<bool>,
    /// `transform_weights` ran since the last load (kept idempotent).
    pub transformed: bool,
}

impl ExpertWeights {
    /// The tensor `name`, or a lifecycle error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| crate::MoeError::lifecycle(format!("expert tensor `{name}` was not created")))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        self.tensors
            .get_mut(name)
            .ok_or_else(|| crate::MoeError::lifecycle(format!("expert tensor `{name}` was not created")))
    }

    pub fn all_loaded(&self) -> bool {
        self.loaded.iter().all(|&l| l)
    }
}

/// A quantization method (one per format).
pub trait QuantMethod: Send + Sync {
    fn name(&self) -> &'static str;
    fn algo(&self) -> QuantAlgo;

    /// Allocates every per-slot tensor for `layout`.
    fn create_weights(&self, layout: &LayerLayout) -> Result<ExpertWeights>;

    /// Copies the experts of the local slots from `src` (TP-sharded). With `allow_partial`,
    /// missing experts are left for a later call; otherwise a missing tensor is an error.
    fn load_weights(
        &self,
        weights: &mut ExpertWeights,
        layout: &LayerLayout,
        src: &dyn WeightSource,
        allow_partial: bool,
    ) -> Result<()>;

    /// Validates completeness and folds scales once all slots are loaded.
    fn process_weights_after_loading(&self, weights: &mut ExpertWeights, layout: &LayerLayout) -> Result<()>;

    /// Kernel-layout transforms; idempotent.
    fn transform_weights(&self, weights: &mut ExpertWeights, layout: &LayerLayout) -> Result<()>;

    /// Folds input/weight scales into the factors the kernels use.
    fn setup_quant_scales(&self, weights: &mut ExpertWeights, layout: &LayerLayout) -> Result<()>;

    /// Quantizes activations as the format prescribes; the identity (16-bit activations)
    /// returns `x` borrowed ([`QuantizedInput::borrowed`]), never a copy.
    fn quantize_input<'a>(&self, x: &'a Tensor, weights: &ExpertWeights) -> Result<QuantizedInput<'a>>;

    fn eplb_support_status(&self) -> EplbSupportStatus;

    /// Whether EPLB needs host staging copies of all experts this rank may host.
    fn need_load_shared_weights(&self) -> bool;

    /// Every per-expert tensor this method creates, for EPLB migration.
    fn expert_tensors(&self, layout: &LayerLayout) -> Vec<ExpertTensorRegistration>;
}
