//! Layer configuration: what a model asks of one MoE layer (sizes, activation, routing,
//! quantization, parallel mapping, chunk limit, EPLB), as serde data.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{MoeError, Result};
use crate::limits;
use crate::routing::RoutingMethod;

/// Expert activation. Gated activations read the fused FC1 output as `[up ; gate]`
/// (TensorRT-LLM's `w3_w1` order) and apply the nonlinearity to the second half.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// `silu(gate) * up`.
    Swiglu,
    /// GPT-OSS clamped SwiGLU: `gate = min(gate, limit)`, `up = clamp(up, -limit, limit)`,
    /// `out = (up + beta) * gate * sigmoid(alpha * gate)`.
    SwigluGptOss { alpha: f32, beta: f32, limit: f32 },
    /// Not gated: `relu(x)^2` (Nemotron-H style); FC1 holds only `w1`.
    Relu2,
}

impl Activation {
    /// GPT-OSS's published constants (alpha 1.702, beta 1, limit 7).
    pub const GPT_OSS: Activation = Activation::SwigluGptOss {
        alpha: 1.702,
        beta: 1.0,
        limit: 7.0,
    };

    /// Whether FC1 carries a gate half (`expand = 2`).
    pub fn is_gated(self) -> bool {
        !matches!(self, Activation::Relu2)
    }

    /// Rows of FC1 per intermediate channel: 2 for gated activations, 1 otherwise.
    pub fn expand_ratio(self) -> usize {
        if self.is_gated() { 2 } else { 1 }
    }

    /// Name used in problems, reports and the capability table.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Swiglu => "swiglu",
            Activation::SwigluGptOss { .. } => "swiglu_gptoss",
            Activation::Relu2 => "relu2",
        }
    }
}

/// Quantization algorithm of the expert weights (canonical names, as TensorRT-LLM's
/// `QuantAlgo`). Formats other than `None` are owned by `moe-quant`; what each format is (its
/// names, checkpoint layout, activation quantization, dtypes, EPLB status, tolerance) is its
/// descriptor, `QuantAlgo::descriptor` (`crate::quant_format::FORMATS`, one per variant in this
/// order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantAlgo {
    None,
    /// FP8 e4m3 per-tensor weights and static per-tensor activations (W8A8).
    Fp8PerTensor,
    /// FP8 e4m3 128x128 weight blocks, dynamic 1x128 activation groups (DeepSeek).
    Fp8Block,
    /// NVFP4: e2m1 values, e4m3 scale per 16, per-tensor global scale.
    Nvfp4,
    /// MXFP4 weights (e2m1, UE8M0 scale per 32) with 16-bit activations (GPT-OSS).
    W4A16Mxfp4,
    /// INT4 group-wise weights with 16-bit activations.
    W4A16Int4,
    /// INT8 weight-only per output channel.
    W8A16,
}

/// Quantization of a layer: the algorithm plus format parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    pub algo: QuantAlgo,
    /// Weight block size `[rows, cols]` for block formats (FP8 block: `[128, 128]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_block_size: Option<[usize; 2]>,
    /// Group size along the input dimension for group-wise formats (INT4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        QuantConfig {
            algo: QuantAlgo::None,
            weight_block_size: None,
            group_size: None,
        }
    }
}

/// How the layer is split across ranks (TensorRT-LLM's `Mapping`, MoE part).
///
/// `ep` shards experts, `tp` shards the intermediate dimension of every expert; the
/// communicator spans `ep_size * tp_size` ranks. With `attention_dp`, every rank brings its
/// own tokens (`all_rank_num_tokens`); without it, all ranks see the same tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelConfig {
    pub ep_size: usize,
    pub ep_rank: usize,
    pub tp_size: usize,
    pub tp_rank: usize,
    pub attention_dp: bool,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            ep_size: 1,
            ep_rank: 0,
            tp_size: 1,
            tp_rank: 0,
            attention_dp: false,
        }
    }
}

impl ParallelConfig {
    /// Width of the communicator the layer's collectives run over.
    pub fn parallel_size(&self) -> usize {
        self.ep_size * self.tp_size
    }

    /// This rank's index in that communicator (EP-major, TP-minor).
    pub fn parallel_rank(&self) -> usize {
        self.ep_rank * self.tp_size + self.tp_rank
    }

    pub fn validate(&self) -> Result<()> {
        if self.ep_size == 0 || self.tp_size == 0 {
            return Err(MoeError::config("parallel", "ep_size and tp_size must be at least 1"));
        }
        if self.ep_rank >= self.ep_size {
            return Err(MoeError::config(
                "parallel.ep_rank",
                format!("ep_rank {} out of range for ep_size {}", self.ep_rank, self.ep_size),
            ));
        }
        if self.tp_rank >= self.tp_size {
            return Err(MoeError::config(
                "parallel.tp_rank",
                format!("tp_rank {} out of range for tp_size {}", self.tp_rank, self.tp_size),
            ));
        }
        Ok(())
    }
}

/// Expert-parallel load balancing of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EplbConfig {
    /// Physical expert slots over all ranks (`>= num_experts`; extra slots hold replicas).
    pub num_slots: usize,
    /// 0 = static placement (routing table fixed); `n > 0` = dynamic, rebalanced every
    /// `n` iterations' worth of layer updates.
    #[serde(default)]
    pub layer_updates_per_iter: usize,
    /// Slot -> expert table of length `num_slots`; `None` = TensorRT-LLM's default wrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_global_assignments: Option<Vec<usize>>,
}

impl EplbConfig {
    /// Checks the slot count (`num_experts..=MAX_SLOTS`) and, when given, the table's length
    /// and expert ids, before anything is sized from them; errors name the field.
    pub fn validate(&self, num_experts: usize) -> Result<()> {
        limits::check_max("eplb.num_slots", self.num_slots, limits::MAX_SLOTS)?;
        if self.num_slots < num_experts {
            return Err(MoeError::config(
                "eplb.num_slots",
                format!("{} slots cannot hold {num_experts} experts", self.num_slots),
            ));
        }
        if let Some(table) = &self.initial_global_assignments {
            if table.len() != self.num_slots {
                return Err(MoeError::config(
                    "eplb.initial_global_assignments",
                    format!("has {} entries, expected num_slots = {}", table.len(), self.num_slots),
                ));
            }
            if let Some((s, x)) = table.iter().enumerate().find(|(_, x)| **x >= num_experts) {
                return Err(MoeError::config(
                    format!("eplb.initial_global_assignments[{s}]"),
                    format!("names expert {x}, but the layer has {num_experts} experts"),
                ));
            }
        }
        Ok(())
    }
}

/// Everything one MoE layer needs to be built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Routed experts (global, unsharded).
    pub num_experts: usize,
    pub hidden_size: usize,
    /// Intermediate size of one expert (global, unsharded).
    pub intermediate_size: usize,
    pub activation: Activation,
    /// Experts carry FC1/FC2 biases.
    #[serde(default)]
    pub bias: bool,
    /// Activation dtype and dtype of unquantized weights and of the output.
    pub dtype: DType,
    #[serde(default)]
    pub quant: QuantConfig,
    /// Routing method; its `top_k` is the layer's top-k.
    pub routing: RoutingMethod,
    /// Multiply the routing weight into the expert input instead of the output (Llama4; k=1).
    #[serde(default)]
    pub apply_router_weight_on_input: bool,
    #[serde(default)]
    pub parallel: ParallelConfig,
    /// Largest number of tokens one chunk may hold (`None` = no chunking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_max_num_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eplb: Option<EplbConfig>,
    /// Backend family the caller prefers (`reference`, `cpu`, ...); `None` = automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Layer index in the model, for reports and EPLB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_idx: Option<usize>,
    /// CUDA device ordinal a device backend runs on (`None` = device 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_device: Option<usize>,
}

impl MoeConfig {
    /// A bf16/f32 SwiGLU layer with no parallelism, the starting point most callers edit.
    pub fn new(
        num_experts: usize,
        hidden_size: usize,
        intermediate_size: usize,
        dtype: DType,
        routing: RoutingMethod,
    ) -> Self {
        MoeConfig {
            num_experts,
            hidden_size,
            intermediate_size,
            activation: Activation::Swiglu,
            bias: false,
            dtype,
            quant: QuantConfig::default(),
            routing,
            apply_router_weight_on_input: false,
            parallel: ParallelConfig::default(),
            moe_max_num_tokens: None,
            eplb: None,
            backend: None,
            layer_idx: None,
            cuda_device: None,
        }
    }

    pub fn top_k(&self) -> usize {
        self.routing.top_k()
    }

    /// Intermediate channels this rank holds (`intermediate_size / tp_size`, floor, as
    /// TensorRT-LLM; [`MoeConfig::validate`] refuses sizes that do not divide).
    pub fn intermediate_size_per_partition(&self) -> usize {
        self.intermediate_size / self.parallel.tp_size
    }

    /// Checks everything that can be checked without a backend; each error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.num_experts == 0 {
            return Err(MoeError::config("num_experts", "must be at least 1"));
        }
        // Bounds first: every size product below and in the layer is then far from overflow.
        limits::check_max("num_experts", self.num_experts, limits::MAX_EXPERTS)?;
        limits::check_max("hidden_size", self.hidden_size, limits::MAX_DIM)?;
        limits::check_max("intermediate_size", self.intermediate_size, limits::MAX_DIM)?;
        limits::check_max("parallel.ep_size", self.parallel.ep_size, limits::MAX_WORLD)?;
        limits::check_max("parallel.tp_size", self.parallel.tp_size, limits::MAX_WORLD)?;
        limits::check_max(
            "parallel.ep_size * tp_size",
            self.parallel.parallel_size(),
            limits::MAX_WORLD,
        )?;
        if let Some(m) = self.moe_max_num_tokens {
            limits::check_max("moe_max_num_tokens", m, limits::MAX_TOKENS)?;
        }
        let per_expert = limits::checked_product(
            "expert weights",
            &[
                self.activation.expand_ratio() + 1,
                self.hidden_size,
                self.intermediate_size,
            ],
        )?;
        let total = limits::checked_product("expert weights", &[per_expert, self.num_experts])?;
        limits::check_max(
            "expert weights (elements of the layer)",
            total,
            limits::MAX_LAYER_ELEMENTS,
        )?;
        if let Some(eplb) = &self.eplb {
            eplb.validate(self.num_experts)?;
        }
        if self.hidden_size == 0 {
            return Err(MoeError::config("hidden_size", "must be at least 1"));
        }
        if self.intermediate_size == 0 {
            return Err(MoeError::config("intermediate_size", "must be at least 1"));
        }
        if !self.dtype.is_float_activation() {
            return Err(MoeError::config(
                "dtype",
                format!("activation dtype must be f32, f16 or bf16, got {}", self.dtype),
            ));
        }
        self.routing.validate(self.num_experts)?;
        let k = self.top_k();
        if self.apply_router_weight_on_input && k != 1 {
            return Err(MoeError::config(
                "apply_router_weight_on_input",
                format!("weight-on-input needs top_k = 1, got {k}"),
            ));
        }
        self.parallel.validate()?;
        if !self.intermediate_size.is_multiple_of(self.parallel.tp_size) {
            return Err(MoeError::config(
                "parallel.tp_size",
                format!(
                    "intermediate_size {} is not divisible by tp_size {}",
                    self.intermediate_size, self.parallel.tp_size
                ),
            ));
        }
        if self.moe_max_num_tokens == Some(0) {
            return Err(MoeError::config("moe_max_num_tokens", "must be at least 1"));
        }
        if let (RoutingMethod::Static { .. }, Some(limit)) = (&self.routing, self.moe_max_num_tokens) {
            // A static table is indexed by token, and a chunk does not know its offset.
            return Err(MoeError::config(
                "moe_max_num_tokens",
                format!("a static routing table cannot be split into chunks of {limit} tokens; leave chunking off"),
            ));
        }
        if let Activation::SwigluGptOss { limit, .. } = self.activation
            && (limit.is_nan() || limit <= 0.0)
        {
            return Err(MoeError::config(
                "activation.limit",
                format!("must be > 0, got {limit}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tables_refuse_chunking() {
        let routing = RoutingMethod::Static {
            top_k: 1,
            ids: vec![0, 1],
            scales: None,
        };
        let mut c = MoeConfig::new(2, 4, 4, DType::F32, routing);
        assert!(c.validate().is_ok());
        c.moe_max_num_tokens = Some(1);
        let err = c.validate().unwrap_err();
        assert!(
            matches!(&err, MoeError::InvalidConfig { field, .. } if field == "moe_max_num_tokens"),
            "{err}"
        );
    }

    #[test]
    fn tp_must_divide_the_intermediate_size() {
        let mut c = MoeConfig::new(4, 8, 6, DType::BF16, RoutingMethod::Renormalize { top_k: 2 });
        c.parallel.tp_size = 4;
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("not divisible by tp_size 4"), "{err}");
    }

    #[test]
    fn sizes_slots_and_chunks_past_the_limits_are_refused_naming_the_field() {
        let base = MoeConfig::new(4, 8, 8, DType::BF16, RoutingMethod::Renormalize { top_k: 2 });
        let field_of = |c: &MoeConfig| match c.validate() {
            Err(MoeError::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let mut c = base.clone();
        c.moe_max_num_tokens = Some(1 << 63);
        assert_eq!(field_of(&c), "moe_max_num_tokens");
        let mut c = base.clone();
        c.hidden_size = 1 << 40;
        assert_eq!(field_of(&c), "hidden_size");
        let mut c = base.clone();
        (c.num_experts, c.hidden_size, c.intermediate_size) = (1 << 16, 1 << 20, 1 << 20);
        c.routing = RoutingMethod::Renormalize { top_k: 2 };
        assert!(field_of(&c).starts_with("expert weights"));
        let mut c = base.clone();
        c.eplb = Some(EplbConfig {
            num_slots: 1_000_000_000_000,
            layer_updates_per_iter: 0,
            initial_global_assignments: None,
        });
        assert_eq!(field_of(&c), "eplb.num_slots");
        c.eplb = Some(EplbConfig {
            num_slots: 4,
            layer_updates_per_iter: 0,
            initial_global_assignments: Some(vec![0, 1, 2, 1 << 40]),
        });
        assert_eq!(field_of(&c), "eplb.initial_global_assignments[3]");
        c.eplb = None;
        c.parallel.ep_size = 5000;
        assert_eq!(field_of(&c), "parallel.ep_size");
    }
}
