//! Selection vocabulary: what is asked ([`MoeProblem`]), where it runs ([`MoeDeployment`],
//! [`MoeEnvironment`]), a backend's verdict ([`Eligibility`] with a closed [`RejectReason`]),
//! and the factory's [`ResolutionReport`].

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::config::{MoeConfig, QuantAlgo};
use crate::dtype::DType;

/// Which scheduler drives a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// The scheduler routes, dispatches and combines on the host side of the backend.
    ExternalComm,
    /// The backend owns the cross-rank exchange inside `run_moe`.
    FusedComm,
}

/// Whether a quant method's weights can be migrated between slots by online EPLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EplbSupportStatus {
    Supported,
    NotSupported,
    NotVerified,
}

/// Closed set of reasons a backend declines a problem (TensorRT-LLM's `MoERejectReason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectReason {
    QuantUnsupported,
    DtypeUnsupported,
    /// The device (SM version, CPU features) cannot run the kernels.
    DeviceUnsupported,
    DepMissing,
    ShapeUnaligned,
    SlotsNotDivisibleByEp,
    TopologyUnsupported,
    LoraUnsupported,
    ActivationUnsupported,
    RoutingUnsupported,
    EplbUnsupported,
    FinalizeFusionRequired,
    PathNotEnabled,
    BackendDeprecated,
    NotAnImpl,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("UNKNOWN"))
    }
}

/// A backend's verdict on a problem. Invariant: eligible iff no reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Eligibility {
    Ok,
    No { reason: RejectReason, detail: String },
}

impl Eligibility {
    pub fn ok() -> Self {
        Eligibility::Ok
    }

    /// A rejection; the detail is mandatory and says what exactly does not fit.
    pub fn no(reason: RejectReason, detail: impl Into<String>) -> Self {
        Eligibility::No {
            reason,
            detail: detail.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Eligibility::Ok)
    }

    /// Chains gates: the first rejection wins.
    pub fn and_then(self, next: impl FnOnce() -> Eligibility) -> Eligibility {
        if self.is_ok() { next() } else { self }
    }
}

/// What the layer asks of a backend. `None` fields are unknown, and gates must abstain
/// (accept) on unknown fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeProblem {
    pub quant: QuantAlgo,
    /// Activation dtype before quantization.
    pub dtype_act: DType,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_experts: Option<usize>,
    pub top_k: Option<usize>,
    pub bias: Option<bool>,
    /// Activation name (`swiglu`, `swiglu_gptoss`, `relu2`).
    pub activation: String,
    /// Routing method name (see `RoutingMethod::name`).
    pub routing: Option<String>,
    pub apply_router_weight_on_input: bool,
}

impl MoeProblem {
    pub fn from_config(c: &MoeConfig) -> Self {
        MoeProblem {
            quant: c.quant.algo,
            dtype_act: c.dtype,
            hidden_size: Some(c.hidden_size),
            intermediate_size: Some(c.intermediate_size),
            num_experts: Some(c.num_experts),
            top_k: Some(c.top_k()),
            bias: Some(c.bias),
            activation: c.activation.name().into(),
            routing: Some(c.routing.name().into()),
            apply_router_weight_on_input: c.apply_router_weight_on_input,
        }
    }
}

/// What the machine offers, probed once (centrally, never inside `can_implement`) and frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeEnvironment {
    /// Logical CPUs the caller lets the runtime use.
    pub cpu_threads: usize,
    /// CUDA compute capability of the layer's device (`90` on Hopper), if any.
    pub cuda_sm: Option<u32>,
    /// Optional components present in this build and machine (`cuda`, `mpi`, `nccl`).
    pub available_deps: Vec<String>,
}

impl MoeEnvironment {
    /// First 16 hex digits of a stable hash of the environment, so ranks can compare what
    /// they selected with.
    pub fn fingerprint(&self) -> String {
        // FNV-1a: stable across processes and Rust versions, unlike `DefaultHasher`.
        let repr = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf29ce484222325;
        for b in repr.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

/// Where the layer runs: parallel mapping, EPLB and the frozen environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeDeployment {
    pub ep_size: usize,
    /// MoE tensor parallelism (shards the intermediate dimension).
    pub tp_size: usize,
    pub use_dp: bool,
    pub num_slots: usize,
    pub parallel_size: usize,
    pub eplb_enabled: bool,
    pub env: MoeEnvironment,
}

impl MoeDeployment {
    pub fn from_config(c: &MoeConfig, env: MoeEnvironment) -> Self {
        MoeDeployment {
            ep_size: c.parallel.ep_size,
            tp_size: c.parallel.tp_size,
            use_dp: c.parallel.attention_dp,
            num_slots: c.eplb.as_ref().map_or(c.num_experts, |e| e.num_slots),
            parallel_size: c.parallel.parallel_size(),
            eplb_enabled: c.eplb.is_some(),
            env,
        }
    }
}

/// How the winner was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectedBy {
    /// Nothing was requested: the first eligible backend in priority order won.
    Automatic,
    /// The winner belongs to the requested family.
    Pinned,
    /// The request could not be honoured; a fallback won (degraded).
    Heuristic,
    /// No candidate is eligible.
    Failed,
}

/// One candidate's rejection, as recorded in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCandidate {
    pub backend: String,
    pub reason: RejectReason,
    pub detail: String,
}

/// Which communication strategy the layer got, and why the others were passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommSelection {
    /// What the caller asked for (`auto` or a strategy name).
    pub requested: String,
    /// The strategy in use (`None` for a single rank).
    pub chosen: Option<String>,
    /// Why each strategy tried before the chosen one was not used.
    pub passed_over: Vec<(String, String)>,
}

/// The factory's account of which backend was chosen and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolutionReport {
    pub problem: MoeProblem,
    pub deployment: MoeDeployment,
    /// The requested backend family, if any.
    pub requested: Option<String>,
    pub winner: Option<String>,
    pub selected_by: SelectedBy,
    /// Every eligible candidate in priority order (the winner first).
    pub eligible: Vec<String>,
    pub rejected: Vec<RejectedCandidate>,
    pub env_fingerprint: String,
    /// The communication strategy (multi-rank layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<CommSelection>,
}

impl ResolutionReport {
    /// True when the request could not be honoured and a fallback won.
    pub fn degraded(&self) -> bool {
        self.selected_by == SelectedBy::Heuristic
    }

    /// Eligible candidates that lost to the winner.
    pub fn alternatives(&self) -> &[String] {
        self.eligible.get(1..).unwrap_or(&[])
    }
}

impl fmt::Display for ResolutionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "backend: {} (selected by {:?}{}; requested: {})",
            self.winner.as_deref().unwrap_or("<none>"),
            self.selected_by,
            if self.degraded() { ", DEGRADED" } else { "" },
            self.requested.as_deref().unwrap_or("auto"),
        )?;
        writeln!(
            f,
            "problem: quant={} dtype={} E={} k={} H={} I={} activation={} routing={}",
            self.problem.quant.as_str(),
            self.problem.dtype_act,
            opt(self.problem.num_experts),
            opt(self.problem.top_k),
            opt(self.problem.hidden_size),
            opt(self.problem.intermediate_size),
            self.problem.activation,
            self.problem.routing.as_deref().unwrap_or("?"),
        )?;
        writeln!(
            f,
            "deployment: ep={} tp={} attention_dp={} slots={} env={}",
            self.deployment.ep_size,
            self.deployment.tp_size,
            self.deployment.use_dp,
            self.deployment.num_slots,
            self.env_fingerprint
        )?;
        if let Some(c) = &self.comm {
            writeln!(
                f,
                "comm: {} (requested: {})",
                c.chosen.as_deref().unwrap_or("none"),
                c.requested
            )?;
            for (name, why) in &c.passed_over {
                writeln!(f, "comm passed over {name}: {why}")?;
            }
        }
        if !self.alternatives().is_empty() {
            writeln!(f, "also eligible: {}", self.alternatives().join(", "))?;
        }
        for r in &self.rejected {
            writeln!(f, "rejected {}: {} ({})", r.backend, r.reason, r.detail)?;
        }
        Ok(())
    }
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reason_display_is_screaming_snake() {
        assert_eq!(
            RejectReason::SlotsNotDivisibleByEp.to_string(),
            "SLOTS_NOT_DIVISIBLE_BY_EP"
        );
        assert_eq!(RejectReason::NotAnImpl.to_string(), "NOT_AN_IMPL");
    }

    #[test]
    fn eligibility_chains_first_rejection() {
        let e = Eligibility::ok()
            .and_then(|| Eligibility::no(RejectReason::DtypeUnsupported, "fp8"))
            .and_then(|| Eligibility::no(RejectReason::QuantUnsupported, "never reached"));
        assert_eq!(e, Eligibility::no(RejectReason::DtypeUnsupported, "fp8"));
        assert!(!e.is_ok());
    }

    #[test]
    fn fingerprint_is_stable() {
        let env = MoeEnvironment {
            cpu_threads: 2,
            cuda_sm: None,
            available_deps: vec![],
        };
        assert_eq!(env.fingerprint(), env.clone().fingerprint());
        assert_eq!(env.fingerprint().len(), 16);
    }
}
