//! The single selection entry point: [`resolve_moe_impl`] asks every candidate backend for
//! its verdict and reports winner, alternatives and rejections; [`create_moe`] builds the
//! assembled layer from the report.

use moe_core::{
    MoeConfig, MoeDeployment, MoeEnvironment, MoeError, MoeProblem, RejectedCandidate, ResolutionReport, Result,
    SelectedBy,
};

use crate::assembler::{ConfigurableMoe, LayerParts};
use crate::env::probe_environment;
use crate::registry::{self, BackendEntry, FALLBACK, NO_FALLBACK, REGISTRY};

/// Options of [`create_moe_with`].
pub struct CreateOptions {
    /// The frozen environment verdicts are taken against (default: [`probe_environment`]).
    pub env: Option<MoeEnvironment>,
    /// Accept a fallback backend when the requested one cannot run the problem (recorded as
    /// degraded in the report). When false, such a request is an error.
    pub allow_degradation: bool,
    /// Communication and load balancing for multi-rank or EPLB layers.
    pub parts: LayerParts,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            env: None,
            allow_degradation: true,
            parts: LayerParts::default(),
        }
    }
}

/// Resolves which backend implements `config` on `env`.
///
/// Candidates are the requested family in priority order, then the fallback (unless the
/// family contains it or must not degrade); with no request, every registered backend.
/// Every candidate is asked, so the report lists all alternatives and rejections.
/// An unknown backend name is an error naming it.
pub fn resolve_moe_impl(config: &MoeConfig, env: &MoeEnvironment) -> Result<ResolutionReport> {
    resolve_in(REGISTRY, config, env)
}

/// [`resolve_moe_impl`] over an explicit registry (so selection rules are testable with
/// stand-in backends).
pub(crate) fn resolve_in(
    registry: &'static [BackendEntry],
    config: &MoeConfig,
    env: &MoeEnvironment,
) -> Result<ResolutionReport> {
    let problem = MoeProblem::from_config(config);
    let deployment = MoeDeployment::from_config(config, env.clone());
    let requested = config.backend.clone();
    let (family, candidates): (Vec<&BackendEntry>, Vec<&BackendEntry>) = match requested.as_deref() {
        None | Some("auto") => {
            let all: Vec<_> = registry.iter().collect();
            (all.clone(), all)
        }
        Some(name) => {
            let family = registry::family(registry, name).ok_or_else(|| {
                let known: Vec<_> = registry.iter().map(|e| e.name).collect();
                MoeError::config(
                    "backend",
                    format!("unknown backend `{name}`; known: {}", known.join(", ")),
                )
            })?;
            let mut candidates = family.clone();
            if !NO_FALLBACK.contains(&name) && !family.iter().any(|e| e.name == FALLBACK) {
                candidates.extend(registry::lookup(registry, FALLBACK));
            }
            (family, candidates)
        }
    };

    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for c in &candidates {
        match (c.can_implement)(&problem, &deployment) {
            moe_core::Eligibility::Ok => eligible.push(c.name.to_string()),
            moe_core::Eligibility::No { reason, detail } => rejected.push(RejectedCandidate {
                backend: c.name.into(),
                reason,
                detail,
            }),
        }
    }
    let winner = eligible.first().cloned();
    let automatic = matches!(requested.as_deref(), None | Some("auto"));
    let selected_by = match &winner {
        None => SelectedBy::Failed,
        Some(_) if automatic => SelectedBy::Automatic,
        Some(w) if family.iter().any(|e| e.name == w) => SelectedBy::Pinned,
        Some(_) => SelectedBy::Heuristic,
    };
    Ok(ResolutionReport {
        problem,
        env_fingerprint: deployment.env.fingerprint(),
        deployment,
        requested: requested.filter(|r| r != "auto"),
        winner,
        selected_by,
        eligible,
        rejected,
        comm: None,
    })
}

/// Builds the layer for `config` with default options (probed environment, degradation
/// allowed and logged, single rank, no EPLB).
pub fn create_moe(config: MoeConfig) -> Result<ConfigurableMoe> {
    create_moe_with(config, CreateOptions::default())
}

/// Builds the layer for `config`: validates it, resolves the backend, and assembles.
pub fn create_moe_with(config: MoeConfig, options: CreateOptions) -> Result<ConfigurableMoe> {
    config.validate()?;
    let env = options.env.unwrap_or_else(probe_environment);
    let report = resolve_moe_impl(&config, &env)?;
    let winner = match &report.winner {
        Some(w) => w.clone(),
        None => {
            return Err(MoeError::NoEligibleBackend {
                detail: rejection_trail(&report),
            });
        }
    };
    if report.degraded() {
        if !options.allow_degradation {
            return Err(MoeError::NoEligibleBackend {
                detail: format!(
                    "requested `{}` cannot run this layer and degradation is disabled; {}",
                    report.requested.as_deref().unwrap_or("?"),
                    rejection_trail(&report)
                ),
            });
        }
        tracing::warn!(
            layer = ?config.layer_idx,
            requested = report.requested.as_deref().unwrap_or("?"),
            winner = %winner,
            "MoE backend degraded: {}",
            rejection_trail(&report)
        );
    }
    let entry = registry::lookup(REGISTRY, &winner).ok_or_else(|| MoeError::NoEligibleBackend {
        detail: format!("winner `{winner}` is not registered"),
    })?;
    ConfigurableMoe::assemble(config, entry, report, options.parts)
}

fn rejection_trail(report: &ResolutionReport) -> String {
    if report.rejected.is_empty() {
        return "no candidates".into();
    }
    report
        .rejected
        .iter()
        .map(|r| format!("{}: {} ({})", r.backend, r.reason, r.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{
        Capabilities, DType, Eligibility, ExpertPartition, MoeBackend, MoeDeployment, MoeProblem, QuantAlgo,
        RejectReason, RoutingMethod,
    };

    fn caps() -> Capabilities {
        Capabilities {
            device: "cpu".into(),
            quant: vec![QuantAlgo::None],
            dtypes: vec![DType::F32],
            activations: vec!["swiglu".into()],
            supports_bias: false,
            supports_apply_router_weight_on_input: false,
            supports_eplb: false,
            supports_non_divisible_ep: false,
            supports_tp: false,
        }
    }

    fn no_build(_: &MoeConfig, _: ExpertPartition) -> Result<Box<dyn MoeBackend>> {
        Err(MoeError::lifecycle("stand-in backends are never built"))
    }

    fn only_f32(p: &MoeProblem, _: &MoeDeployment) -> Eligibility {
        if p.dtype_act == DType::F32 {
            Eligibility::ok()
        } else {
            Eligibility::no(RejectReason::DtypeUnsupported, format!("{} activations", p.dtype_act))
        }
    }

    fn any(_: &MoeProblem, _: &MoeDeployment) -> Eligibility {
        Eligibility::ok()
    }

    fn never(_: &MoeProblem, _: &MoeDeployment) -> Eligibility {
        Eligibility::no(RejectReason::QuantUnsupported, "stand-in refuses everything")
    }

    static FAKE: &[BackendEntry] = &[
        BackendEntry {
            name: "fast",
            can_implement: only_f32,
            capabilities: caps,
            build: no_build,
        },
        BackendEntry {
            name: "cpu",
            can_implement: any,
            capabilities: caps,
            build: no_build,
        },
        BackendEntry {
            name: "reference",
            can_implement: never,
            capabilities: caps,
            build: no_build,
        },
    ];

    fn env() -> MoeEnvironment {
        MoeEnvironment {
            cpu_threads: 2,
            cuda_sm: None,
            available_deps: vec![],
        }
    }

    fn config(dtype: DType, backend: Option<&str>) -> MoeConfig {
        let mut c = MoeConfig::new(8, 16, 16, dtype, RoutingMethod::Renormalize { top_k: 2 });
        c.backend = backend.map(str::to_owned);
        c
    }

    #[test]
    fn requested_family_wins_when_eligible() {
        let r = resolve_in(FAKE, &config(DType::F32, Some("fast")), &env()).unwrap();
        assert_eq!(r.winner.as_deref(), Some("fast"));
        assert_eq!(r.selected_by, SelectedBy::Pinned);
        assert!(!r.degraded());
        assert_eq!(
            r.alternatives(),
            &["cpu".to_string()],
            "the fallback is asked too and listed"
        );
    }

    #[test]
    fn fallback_is_recorded_as_degraded() {
        let r = resolve_in(FAKE, &config(DType::BF16, Some("fast")), &env()).unwrap();
        assert_eq!(r.winner.as_deref(), Some("cpu"));
        assert_eq!(r.selected_by, SelectedBy::Heuristic);
        assert!(r.degraded());
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].reason, RejectReason::DtypeUnsupported);
        assert_eq!(r.rejected[0].detail, "bf16 activations");
    }

    #[test]
    fn the_reference_family_never_degrades() {
        let r = resolve_in(FAKE, &config(DType::F32, Some("reference")), &env()).unwrap();
        assert_eq!(r.winner, None);
        assert_eq!(r.selected_by, SelectedBy::Failed);
        assert_eq!(r.rejected.len(), 1, "no fallback candidate is even tried");
    }

    #[test]
    fn automatic_selection_asks_everyone_in_priority_order() {
        let r = resolve_in(FAKE, &config(DType::BF16, None), &env()).unwrap();
        assert_eq!(r.winner.as_deref(), Some("cpu"));
        assert_eq!(r.selected_by, SelectedBy::Automatic);
        assert!(!r.degraded());
        let rejected: Vec<_> = r.rejected.iter().map(|c| c.backend.as_str()).collect();
        assert_eq!(rejected, ["fast", "reference"]);
    }

    #[test]
    fn unknown_backend_is_an_error_naming_it() {
        let err = resolve_in(FAKE, &config(DType::F32, Some("tpu")), &env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown backend `tpu`") && err.contains("fast, cpu, reference"),
            "{err}"
        );
    }
}
