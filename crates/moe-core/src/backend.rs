//! The backend contract: capability declaration, activation quantization, the one compute
//! entry point `run_moe`, and the weight lifecycle. Backends hold no chunking, no EPLB
//! ordering and no host communication; the scheduler drives them.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::comm::ProcessGroup;

use crate::config::{MoeConfig, QuantAlgo};
use crate::dtype::DType;
use crate::error::Result;
use crate::partition::ExpertPartition;
use crate::problem::{Eligibility, MoeDeployment, MoeProblem, SchedulerKind};
use crate::quant::{ExpertWeights, LayerLayout, QuantMethod};
use crate::tensor::Tensor;
use crate::weights::WeightSource;

/// What a backend can do, as data (for the capability table, the factory and the testkit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Where it computes (`cpu`, `cuda`).
    pub device: String,
    pub quant: Vec<QuantAlgo>,
    pub dtypes: Vec<DType>,
    pub activations: Vec<String>,
    pub supports_bias: bool,
    pub supports_apply_router_weight_on_input: bool,
    pub supports_eplb: bool,
    pub supports_non_divisible_ep: bool,
    pub supports_tp: bool,
}

/// Output of `quantize_input`: activations as the kernel reads them, plus scales.
///
/// `x` borrows the caller's activations when the format reads them as they are (16-bit and
/// f32 activations of the unquantized and weight-only formats), so a forward never copies
/// its input to hand it to the kernel; formats that quantize hold their own tensor.
#[derive(Clone, Debug)]
pub struct QuantizedInput<'a> {
    pub x: Cow<'a, Tensor>,
    pub x_sf: Option<Tensor>,
}

impl<'a> QuantizedInput<'a> {
    /// The activations as given, borrowed (no scales): the identity quantization.
    pub fn borrowed(x: &'a Tensor) -> Self {
        QuantizedInput {
            x: Cow::Borrowed(x),
            x_sf: None,
        }
    }

    /// Activations the format produced, with their scales.
    pub fn owned(x: Tensor, x_sf: Option<Tensor>) -> Self {
        QuantizedInput { x: Cow::Owned(x), x_sf }
    }

    /// Whether `x` borrows the caller's tensor (no quantization happened).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.x, Cow::Borrowed(_))
    }

    /// The activations as an owned tensor: a move of quantized activations, a copy of
    /// borrowed host ones (a device tensor's clone shares its buffer).
    pub fn into_owned(self) -> QuantizedInput<'static> {
        QuantizedInput {
            x: Cow::Owned(self.x.into_owned()),
            x_sf: self.x_sf,
        }
    }
}

/// How the scheduler moved the activations (TensorRT-LLM's `MoECommPlan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommPlan {
    pub input_sf_swizzled: bool,
    pub enable_alltoall: bool,
}

/// Inputs of one `run_moe` call (one chunk).
#[derive(Clone, Copy, Debug)]
pub struct MoeRunContext<'a> {
    /// Activations `[N, H]` (quantized by `quantize_input` where the format asks).
    pub x: &'a Tensor,
    pub x_sf: Option<&'a Tensor>,
    /// Global slot ids `[N, k]` i32 (expert ids when EPLB is off). Slots of other ranks are
    /// skipped.
    pub token_selected_slots: &'a Tensor,
    /// Routing weights `[N, k]` f32; `None` means all ones (weight already applied to input).
    pub token_final_scales: Option<&'a Tensor>,
    pub output_dtype: DType,
    pub all_rank_num_tokens: Option<&'a [usize]>,
    pub comm_plan: Option<CommPlan>,
}

/// An MoE compute backend (one execution unit).
pub trait MoeBackend: Send + Sync {
    /// Stable name used in reports, the CLI and the matrix.
    fn name(&self) -> &'static str;

    /// Pure verdict on a problem; must not probe the machine (use `deployment.env`).
    fn can_implement(problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility
    where
        Self: Sized;

    /// Declared capabilities, without an instance.
    fn declared_capabilities() -> Capabilities
    where
        Self: Sized;

    /// Builds the backend for `config` on the slots of `partition` (no weights yet).
    fn create(config: &MoeConfig, partition: ExpertPartition) -> Result<Self>
    where
        Self: Sized;

    fn capabilities(&self) -> Capabilities;

    fn scheduler_kind(&self) -> SchedulerKind {
        SchedulerKind::ExternalComm
    }

    /// Hands a `SchedulerKind::FusedComm` backend the process group its kernel exchanges
    /// tokens over (the assembler calls it once, at build time). Other backends own no
    /// communication and refuse.
    fn bind_process_group(&mut self, _group: Arc<dyn ProcessGroup>) -> Result<()> {
        Err(crate::MoeError::Unsupported {
            backend: self.name().into(),
            reason: crate::RejectReason::TopologyUnsupported,
            detail: "this backend's exchange happens outside the kernel; it takes no process group".into(),
        })
    }

    /// Whether routing is done outside the kernel so an EPLB balancer can rewrite ids.
    fn supports_load_balancer(&self) -> bool;

    /// Checks constraints that need the whole assembled layer.
    fn validate_configurable_moe(&self, _config: &MoeConfig) -> Result<()> {
        Ok(())
    }

    /// Activations as the kernel reads them. Formats that read `x` as it is return it
    /// borrowed ([`QuantizedInput::borrowed`]): no copy of the input inside a forward.
    fn quantize_input<'a>(&'a self, x: &'a Tensor) -> Result<QuantizedInput<'a>>;

    /// The only compute entry point: experts of the local slots applied to `ctx.x`,
    /// weighted and summed per token. Returns `[N, H]` in `ctx.output_dtype`.
    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor>;

    fn create_weights(&mut self) -> Result<()>;
    fn load_weights(&mut self, src: &dyn WeightSource, allow_partial: bool) -> Result<()>;
    /// `transform_weights` then `cache_derived_state`; idempotent.
    fn post_load_weights(&mut self) -> Result<()>;
    fn process_weights_after_loading(&mut self) -> Result<()>;
    /// Clears derived state so new weights can be loaded.
    fn pre_reload_weights(&mut self) -> Result<()>;

    fn quant_method(&self) -> &dyn QuantMethod;
    fn layout(&self) -> &LayerLayout;
    /// The per-slot tensors (for EPLB migration and tests).
    fn expert_weights(&self) -> &ExpertWeights;
    fn expert_weights_mut(&mut self) -> &mut ExpertWeights;
}
