//! The fused-communication CPU backend (`"cpu-fused"`): the grouped CPU kernels with the
//! cross-rank exchange inside `run_moe`, as a `SchedulerKind::FusedComm` backend.
//!
//! Its kernel gathers every rank's tokens (with their slots and weights) over the process
//! group the assembler bound at build time, computes this rank's slots for all of them, and
//! reduce-scatters the partial outputs back, so the scheduler does no host dispatch or
//! combine. Every rank enters the exchange of every chunk, with zero rows if it has none.
//! Without attention-DP token counts (replicated tokens) the exchange is one all-reduce.

use std::sync::Arc;
use std::time::Duration;

use moe_core::{
    Capabilities, Deadline, Eligibility, ExpertPartition, MoeBackend, MoeConfig, MoeDeployment, MoeError, MoeProblem,
    MoeRunContext, ProcessGroup, QuantizedInput, RejectReason, Result, SchedulerKind, Tensor,
};

use crate::cpu::CpuBackend;

/// Deadline of each in-kernel collective.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// See the module docs.
pub struct FusedCpuBackend {
    inner: CpuBackend,
    group: Option<Arc<dyn ProcessGroup>>,
    multi_rank: bool,
}

impl FusedCpuBackend {
    pub const NAME: &'static str = "cpu-fused";

    fn group(&self) -> Result<Option<&Arc<dyn ProcessGroup>>> {
        match (&self.group, self.multi_rank) {
            (Some(g), _) => Ok(Some(g)),
            (None, false) => Ok(None),
            (None, true) => Err(MoeError::lifecycle(
                "cpu-fused spans several ranks but no process group was bound",
            )),
        }
    }
}

impl MoeBackend for FusedCpuBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_implement(problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility {
        if problem.apply_router_weight_on_input {
            return Eligibility::no(
                RejectReason::RoutingUnsupported,
                "routing weights are applied after the in-kernel exchange; weight-on-input (Llama4) is not supported",
            );
        }
        if deployment.tp_size > 1 {
            return Eligibility::no(
                RejectReason::TopologyUnsupported,
                format!(
                    "the in-kernel exchange moves whole tokens between EP ranks; MoE-TP {} is not supported",
                    deployment.tp_size
                ),
            );
        }
        CpuBackend::can_implement(problem, deployment)
    }

    fn declared_capabilities() -> Capabilities {
        // The CPU kernels' formats and dtypes, minus what the in-kernel exchange cannot do.
        Capabilities {
            supports_tp: false,
            supports_apply_router_weight_on_input: false,
            ..CpuBackend::declared_capabilities()
        }
    }

    fn create(config: &MoeConfig, partition: ExpertPartition) -> Result<Self> {
        Ok(FusedCpuBackend {
            inner: CpuBackend::create(config, partition)?,
            group: None,
            multi_rank: config.parallel.parallel_size() > 1,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Self::declared_capabilities()
    }

    fn scheduler_kind(&self) -> SchedulerKind {
        SchedulerKind::FusedComm
    }

    fn bind_process_group(&mut self, group: Arc<dyn ProcessGroup>) -> Result<()> {
        self.group = Some(group);
        Ok(())
    }

    fn supports_load_balancer(&self) -> bool {
        self.inner.supports_load_balancer()
    }

    fn quantize_input<'a>(&'a self, x: &'a Tensor) -> Result<QuantizedInput<'a>> {
        // Zero rows are valid: a rank without tokens still enters the kernel's exchange.
        self.inner.quantize_input(x)
    }

    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor> {
        let Some(group) = self.group()? else {
            return self.inner.run_moe(ctx);
        };
        let deadline = || Deadline::after(EXCHANGE_TIMEOUT);
        match ctx.all_rank_num_tokens {
            Some(counts) if counts.len() == group.size() => {
                let gather = |t: &Tensor| group.all_gather_v(t, counts, deadline());
                let x = gather(ctx.x)?;
                let x_sf = ctx.x_sf.map(gather).transpose()?;
                let slots = gather(ctx.token_selected_slots)?;
                let scales = ctx.token_final_scales.map(gather).transpose()?;
                let all = MoeRunContext {
                    x: &x,
                    x_sf: x_sf.as_ref(),
                    token_selected_slots: &slots,
                    token_final_scales: scales.as_ref(),
                    all_rank_num_tokens: None,
                    ..*ctx
                };
                let partial = self.inner.run_moe(&all)?;
                group.reduce_scatter_v(&partial, counts, deadline())
            }
            Some(counts) => Err(MoeError::config(
                "all_rank_num_tokens",
                format!("{} entries for a group of {}", counts.len(), group.size()),
            )),
            None => {
                let partial = self.inner.run_moe(ctx)?;
                group.all_reduce_sum(&partial, deadline())
            }
        }
    }

    fn create_weights(&mut self) -> Result<()> {
        self.inner.create_weights()
    }

    fn load_weights(&mut self, src: &dyn moe_core::WeightSource, allow_partial: bool) -> Result<()> {
        self.inner.load_weights(src, allow_partial)
    }

    fn post_load_weights(&mut self) -> Result<()> {
        self.inner.post_load_weights()
    }

    fn process_weights_after_loading(&mut self) -> Result<()> {
        self.inner.process_weights_after_loading()
    }

    fn pre_reload_weights(&mut self) -> Result<()> {
        self.inner.pre_reload_weights()
    }

    fn quant_method(&self) -> &dyn moe_core::QuantMethod {
        self.inner.quant_method()
    }

    fn layout(&self) -> &moe_core::LayerLayout {
        self.inner.layout()
    }

    fn expert_weights(&self) -> &moe_core::ExpertWeights {
        self.inner.expert_weights()
    }

    fn expert_weights_mut(&mut self) -> &mut moe_core::ExpertWeights {
        self.inner.expert_weights_mut()
    }
}
