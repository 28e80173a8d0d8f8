//! `ConfigurableMoe`, the assembler: it constructs the backend (from a registry entry), the
//! scheduler and the communication slot, delegates the weight lifecycle, advances
//! `repeat_idx` once per call, and hands each forward to the scheduler. It holds no compute
//! and no policy of its own, and never branches on which backend it holds.

use std::sync::Arc;
use std::time::Duration;

use moe_core::{
    Communication, Eligibility, EplbSupportStatus, ExpertPartition, ForwardArgs, LayerView, LoadBalancer, MoeBackend,
    MoeConfig, MoeDeployment, MoeError, MoeProblem, MoeScheduler, ProcessGroup, RejectReason, ResolutionReport, Result,
    SchedulerKind, Tensor, WeightSource,
};
use moe_eplb::{Algorithm, DynamicBalancer, Placement, StaticBalancer};
use moe_scheduler::create_moe_scheduler;

use crate::comm_factory::build_comm;
use crate::comm_slot::{CommSlot, FallbackFactory};
use crate::migration::Staging;
use crate::registry::BackendEntry;

/// Communication and load balancing handed to the assembler by the caller.
pub struct LayerParts {
    /// The process group of a multi-rank layer (required when it spans several ranks).
    pub group: Option<Arc<dyn ProcessGroup>>,
    /// Strategy over `group`: `auto` or one of [`crate::COMM_NAMES`].
    pub comm_choice: String,
    /// Deadline of every collective of the layer.
    pub comm_timeout: Duration,
    /// A strategy of the caller's own, used instead of building one over `group`.
    pub comm: Option<Box<dyn Communication>>,
    /// Builds the replacement when the caller's all-to-all strategy is infeasible.
    pub comm_fallback: Option<FallbackFactory>,
    pub balancer: Option<Box<dyn LoadBalancer>>,
}

impl Default for LayerParts {
    fn default() -> Self {
        LayerParts {
            group: None,
            comm_choice: "auto".into(),
            comm_timeout: Duration::from_secs(60),
            comm: None,
            comm_fallback: None,
            balancer: None,
        }
    }
}

/// Per-call options of [`ConfigurableMoe::forward_with`].
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// Tokens on every rank under attention-DP.
    pub all_rank_num_tokens: Option<Vec<usize>>,
    /// The caller padded every rank's rows to the max.
    pub use_dp_padding: bool,
}

/// One assembled MoE layer.
pub struct ConfigurableMoe {
    config: MoeConfig,
    partition: ExpertPartition,
    backend: Box<dyn MoeBackend>,
    scheduler: Box<dyn MoeScheduler>,
    comm: CommSlot,
    balancer: Option<Box<dyn LoadBalancer>>,
    repeat_idx: usize,
    report: ResolutionReport,
    weights_ready: bool,
    /// Host copies of every expert for dynamic EPLB migration (loaded with the weights).
    staging: Option<Staging>,
    /// Local slots rewritten by migrations so far.
    migrated_slots: usize,
}

impl std::fmt::Debug for ConfigurableMoe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigurableMoe")
            .field("backend", &self.backend.name())
            .field("comm", &self.comm.name())
            .field("repeat_idx", &self.repeat_idx)
            .finish_non_exhaustive()
    }
}

impl ConfigurableMoe {
    /// The assembler is never an implementation of its own (TensorRT-LLM `NOT_AN_IMPL`).
    pub fn can_implement(_problem: &MoeProblem, _deployment: &MoeDeployment) -> Eligibility {
        Eligibility::no(
            RejectReason::NotAnImpl,
            "ConfigurableMoe assembles a backend; it does not compute",
        )
    }

    pub(crate) fn assemble(
        config: MoeConfig,
        entry: &BackendEntry,
        mut report: ResolutionReport,
        parts: LayerParts,
    ) -> Result<ConfigurableMoe> {
        let caps = (entry.capabilities)();
        let partition = ExpertPartition::compute(&config, caps.supports_non_divisible_ep)?;
        let parts_group = parts.group.clone();
        let mut backend = (entry.build)(&config, partition.clone())?;
        let fused = backend.scheduler_kind() == SchedulerKind::FusedComm;
        let comm_choice = parts.comm_choice.clone();
        let (comm, comm_fallback) = match parts.comm {
            // A fused-communication backend owns its exchange: it gets the group, not a strategy.
            _ if fused => (None, None),
            Some(custom) => (Some(custom), parts.comm_fallback),
            None => {
                let built = build_comm(
                    &config,
                    parts.group,
                    &parts.comm_choice,
                    parts.comm_timeout,
                    caps.supports_non_divisible_ep,
                )?;
                report.comm = built.selection;
                (built.strategy, built.fallback)
            }
        };
        if fused && config.parallel.parallel_size() > 1 {
            let group = parts_group.clone().ok_or_else(|| {
                MoeError::config(
                    "parallel",
                    "a fused-communication backend over several ranks needs a process group",
                )
            })?;
            backend.bind_process_group(group)?;
            report.comm = Some(moe_core::CommSelection {
                requested: comm_choice,
                chosen: Some(format!("in-kernel ({})", backend.name())),
                passed_over: vec![(
                    "host strategies".into(),
                    "the backend owns its exchange (FusedComm)".into(),
                )],
            });
        }
        let balancer = match (parts.balancer, &config.eplb) {
            (Some(b), _) => Some(b),
            (None, Some(eplb)) if eplb.layer_updates_per_iter == 0 => {
                let placement = Placement::new(partition.initial_global_assignments.clone(), config.num_experts)?;
                Some(Box::new(StaticBalancer::new(placement, config.parallel.ep_rank)) as Box<dyn LoadBalancer>)
            }
            (None, Some(_)) => {
                match backend.quant_method().eplb_support_status() {
                    EplbSupportStatus::NotSupported => {
                        return Err(MoeError::Unsupported {
                            backend: backend.name().into(),
                            reason: RejectReason::EplbUnsupported,
                            detail: format!(
                                "quant method `{}` does not support online EPLB (its experts cannot be migrated); use a static placement (layer_updates_per_iter = 0)",
                                backend.quant_method().name()
                            ),
                        });
                    }
                    EplbSupportStatus::NotVerified => tracing::warn!(
                        quant = backend.quant_method().name(),
                        "dynamic EPLB with a quant method whose migration is not verified"
                    ),
                    EplbSupportStatus::Supported => {}
                }
                let group = parts_group.clone();
                Some(
                    Box::new(DynamicBalancer::from_moe_config(&config, Algorithm::default(), group)?)
                        as Box<dyn LoadBalancer>,
                )
            }
            (None, None) => None,
        };
        if balancer.is_some() && !backend.supports_load_balancer() {
            return Err(MoeError::Unsupported {
                backend: backend.name().into(),
                reason: RejectReason::EplbUnsupported,
                detail: "the backend routes inside its kernel, so a load balancer cannot rewrite expert ids".into(),
            });
        }
        backend.validate_configurable_moe(&config)?;
        let scheduler = create_moe_scheduler(backend.scheduler_kind())?;
        backend.create_weights()?;
        tracing::info!(layer = ?config.layer_idx, backend = backend.name(), "assembled MoE layer");
        Ok(ConfigurableMoe {
            config,
            partition,
            backend,
            scheduler,
            comm: CommSlot::new(comm, comm_fallback),
            balancer,
            repeat_idx: 0,
            report,
            weights_ready: false,
            staging: None,
            migrated_slots: 0,
        })
    }

    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    pub fn partition(&self) -> &ExpertPartition {
        &self.partition
    }

    /// How the backend was chosen.
    pub fn report(&self) -> &ResolutionReport {
        &self.report
    }

    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The backend, read-only (tests and EPLB migration inspect its slot tensors).
    pub fn backend(&self) -> &dyn MoeBackend {
        self.backend.as_ref()
    }

    /// Name of the active communication strategy, if any.
    pub fn comm_name(&self) -> Option<&'static str> {
        self.comm.name()
    }

    /// How many times an infeasible all-to-all was replaced by the fallback strategy.
    pub fn comm_fallbacks(&self) -> usize {
        self.comm.fallbacks
    }

    pub fn repeat_idx(&self) -> usize {
        self.repeat_idx
    }

    fn repeat_count(&self) -> usize {
        self.balancer.as_ref().map_or(1, |b| b.repeat_count().max(1))
    }

    /// Loads every local slot from `src`, validates, folds scales and transforms: the layer is
    /// ready to run afterwards, or unchanged-and-not-ready on error.
    pub fn load_weights(&mut self, src: &dyn WeightSource) -> Result<()> {
        self.weights_ready = false;
        self.staging = None;
        self.backend.load_weights(src, false)?;
        if self.balancer.as_ref().is_some_and(|b| b.is_dynamic()) {
            self.staging = Some(Staging::load(self.backend.as_ref(), src)?);
        }
        self.finish_loading()
    }

    /// Loads whatever `src` holds; call [`ConfigurableMoe::finish_loading`] after the last part.
    pub fn load_weights_partial(&mut self, src: &dyn WeightSource) -> Result<()> {
        self.weights_ready = false;
        self.backend.load_weights(src, true)
    }

    /// Completes a (partial) load: validation, scale folding, kernel-layout transforms.
    pub fn finish_loading(&mut self) -> Result<()> {
        self.backend.process_weights_after_loading()?;
        self.backend.post_load_weights()?;
        self.weights_ready = true;
        Ok(())
    }

    /// Prepares the layer for new weights (clears derived state).
    pub fn pre_reload_weights(&mut self) -> Result<()> {
        self.weights_ready = false;
        self.backend.pre_reload_weights()
    }

    /// Runs the layer on this rank's tokens: `x [T, H]` in the config dtype and
    /// `router_logits [T, E]`; the output has `x`'s dtype.
    pub fn forward(&mut self, x: &Tensor, router_logits: &Tensor) -> Result<Tensor> {
        self.forward_with(x, router_logits, &ForwardOptions::default())
    }

    /// [`ConfigurableMoe::forward`] with attention-DP token counts and padding.
    pub fn forward_with(&mut self, x: &Tensor, router_logits: &Tensor, options: &ForwardOptions) -> Result<Tensor> {
        if !self.weights_ready {
            return Err(MoeError::lifecycle("forward called before the weights were loaded"));
        }
        let repeat_count = self.repeat_count();
        let view = LayerView {
            config: &self.config,
            backend: self.backend.as_ref(),
            comm: &mut self.comm,
            balancer: self.balancer.as_deref_mut().map(|b| b as &mut dyn LoadBalancer),
            repeat_idx: self.repeat_idx,
            repeat_count,
        };
        let args = ForwardArgs {
            x,
            router_logits,
            output_dtype: x.dtype(),
            all_rank_num_tokens: options.all_rank_num_tokens.as_deref(),
            use_dp_padding: options.use_dp_padding,
        };
        let out = self.scheduler.forward(view, args)?;
        self.repeat_idx = (self.repeat_idx + 1) % repeat_count;
        self.apply_pending_migration()?;
        Ok(out)
    }

    /// Rebalance decisions of a dynamic balancer so far (empty otherwise).
    pub fn rebalance_reports(&self) -> &[moe_core::RebalanceReport] {
        self.balancer.as_ref().map_or(&[], |b| b.rebalance_reports())
    }

    /// Local slots rewritten by EPLB migrations so far.
    pub fn migrated_slots(&self) -> usize {
        self.migrated_slots
    }

    /// Copies a published migration plan into the backend's slots, then lets the balancer
    /// route by the new placement. Runs between forwards only.
    fn apply_pending_migration(&mut self) -> Result<()> {
        let Some(balancer) = self.balancer.as_mut() else {
            return Ok(());
        };
        let Some(plan) = balancer.take_migration() else {
            return Ok(());
        };
        let staging = self.staging.as_ref().ok_or_else(|| {
            MoeError::lifecycle(
                "a migration was planned but the layer has no staging copies (weights loaded partially?)",
            )
        })?;
        self.migrated_slots += staging.apply(self.backend.as_mut(), &self.partition, &plan)?;
        balancer.migration_applied(&plan)
    }

    /// Tears the communication strategy down (a collective: every rank calls it).
    pub fn destroy(&mut self) -> Result<()> {
        self.comm.destroy()
    }
}
