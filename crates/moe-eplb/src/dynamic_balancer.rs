//! Dynamic EPLB (`layer_updates_per_iter > 0`) for one layer, in the hook order of spec §C.4:
//! `start_wait_gpu_stage` / `done_wait_gpu_stage` on the first chunk, `update_statistic` and
//! `route` on every chunk, `start_set_cpu_stage` / `done_set_cpu_stage` on the last one.
//!
//! Statistics are counted in `update_statistic` (see [`ExpertStatistics`]). An iteration ends
//! at `done_set_cpu_stage`; at the end of every `layer_updates_per_iter`-th iteration (past
//! the warm-up) the balancer plans a new placement from the decayed loads with its
//! [`Algorithm`] and publishes a [`MigrationPlan`]. Routing keeps using the current placement
//! until the assembler has copied the moved slots' weights and called
//! [`LoadBalancer::migration_applied`]: routing earlier would send tokens to slots that still
//! hold another expert's weights. While a plan is outstanding no new one is made, so at
//! most one migration is ever in flight.
//!
//! Replica choice is [`Placement::route`], shared with the static balancer.

use std::sync::Arc;
use std::time::Duration;

use moe_core::eplb::{MigrationPlan, RebalanceReport, SlotMove};
use moe_core::{ExpertPartition, LoadBalancer, MoeConfig, MoeError, ProcessGroup, Result, Tensor};

use crate::placement::Placement;
use crate::plan::{Algorithm, plan, validate_table};
use crate::statistics::{DEFAULT_DECAY, ExpertStatistics};

/// Everything a dynamic balancer of one layer needs besides its initial placement.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicBalancerConfig {
    /// For reports and logs.
    pub layer_idx: usize,
    pub num_experts: usize,
    pub num_slots: usize,
    /// EP ranks (the GPUs of the placement problem).
    pub ep_size: usize,
    pub ep_rank: usize,
    /// Rebalance at the end of every this many iterations (at least 1).
    pub layer_updates_per_iter: usize,
    /// Iterations `<= warm_up_iters` never rebalance (TensorRT-LLM's `set_warm_up_iter_count`).
    pub warm_up_iters: usize,
    pub algorithm: Algorithm,
    /// Nodes and expert groups, for DeepSeek's hierarchical policy.
    pub num_nodes: usize,
    pub num_groups: usize,
    /// Load-factor decay per iteration.
    pub decay: f64,
    /// How many times the layer runs per iteration (MTP layers run several).
    pub repeat_count: usize,
    /// Bound on each statistics all-reduce.
    pub comm_timeout: Duration,
}

impl DynamicBalancerConfig {
    /// TensorRT-LLM's defaults (decay 0.9, no warm-up, one node and group) with this crate's
    /// default algorithm.
    pub fn new(
        layer_idx: usize,
        num_experts: usize,
        num_slots: usize,
        ep_size: usize,
        ep_rank: usize,
        layer_updates_per_iter: usize,
    ) -> Self {
        DynamicBalancerConfig {
            layer_idx,
            num_experts,
            num_slots,
            ep_size,
            ep_rank,
            layer_updates_per_iter,
            warm_up_iters: 0,
            algorithm: Algorithm::default(),
            num_nodes: 1,
            num_groups: 1,
            decay: DEFAULT_DECAY,
            repeat_count: 1,
            comm_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the layer is in its hook sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Between iterations.
    Idle,
    /// `start_wait_gpu_stage` done.
    Waiting,
    /// `done_wait_gpu_stage` done: statistics and routing.
    Running,
    /// `start_set_cpu_stage` done.
    SetCpu,
}

/// The balancer of a layer whose placement follows its load.
#[derive(Debug)]
pub struct DynamicBalancer {
    cfg: DynamicBalancerConfig,
    placement: Placement,
    stats: ExpertStatistics,
    stage: Stage,
    /// This iteration's statistics: the first chunk has been counted / the last one.
    counted_first: bool,
    counted_last: bool,
    /// Completed iterations.
    iteration: usize,
    /// Planned, not yet handed out.
    pending: Option<MigrationPlan>,
    /// Handed out, not yet applied.
    in_flight: Option<MigrationPlan>,
    reports: Vec<RebalanceReport>,
}

impl DynamicBalancer {
    /// A balancer starting from `initial` (slot -> expert, length `num_slots`). `group` is the
    /// layer's EP communicator for the statistics all-reduce (`None`: a world of one).
    pub fn new(cfg: DynamicBalancerConfig, initial: Vec<usize>, group: Option<Arc<dyn ProcessGroup>>) -> Result<Self> {
        if cfg.layer_updates_per_iter == 0 {
            return Err(MoeError::config(
                "eplb.layer_updates_per_iter",
                "a dynamic balancer needs layer_updates_per_iter >= 1 (0 is the static placement)",
            ));
        }
        if cfg.ep_rank >= cfg.ep_size {
            return Err(MoeError::config(
                "parallel.ep_rank",
                format!("ep_rank {} out of range for ep_size {}", cfg.ep_rank, cfg.ep_size),
            ));
        }
        if cfg.repeat_count == 0 {
            return Err(MoeError::config("eplb repeat_count", "must be at least 1"));
        }
        if let Some(g) = &group
            && g.size() != cfg.ep_size
        {
            return Err(MoeError::config(
                "eplb process group",
                format!("has {} ranks, but ep_size is {}", g.size(), cfg.ep_size),
            ));
        }
        validate_table("eplb initial placement", &initial, cfg.num_experts, cfg.num_slots)?;
        // Plan once on a zero load so a geometry the algorithm refuses fails here, at
        // construction, not in the middle of a forward.
        plan(
            &[vec![0.0; cfg.num_experts]],
            cfg.num_slots,
            cfg.ep_size,
            cfg.num_nodes,
            cfg.num_groups,
            cfg.algorithm,
            Some(std::slice::from_ref(&initial)),
        )?;
        let stats = ExpertStatistics::new(cfg.num_experts, cfg.decay, group, cfg.comm_timeout)?;
        let placement = Placement::new(initial, cfg.num_experts)?;
        Ok(DynamicBalancer {
            cfg,
            placement,
            stats,
            stage: Stage::Idle,
            counted_first: false,
            counted_last: false,
            iteration: 0,
            pending: None,
            in_flight: None,
            reports: Vec::new(),
        })
    }

    /// From a layer config with dynamic EPLB: slots, cadence and the initial table (or
    /// TensorRT-LLM's default wrap) come from `config.eplb`, ranks from `config.parallel`.
    pub fn from_moe_config(
        config: &MoeConfig,
        algorithm: Algorithm,
        group: Option<Arc<dyn ProcessGroup>>,
    ) -> Result<Self> {
        let eplb = config
            .eplb
            .as_ref()
            .ok_or_else(|| MoeError::config("eplb", "dynamic EPLB needs an eplb section"))?;
        let partition = ExpertPartition::compute(config, true)?;
        let mut cfg = DynamicBalancerConfig::new(
            config.layer_idx.unwrap_or(0),
            config.num_experts,
            eplb.num_slots,
            config.parallel.ep_size,
            config.parallel.ep_rank,
            eplb.layer_updates_per_iter,
        );
        cfg.algorithm = algorithm;
        DynamicBalancer::new(cfg, partition.initial_global_assignments, group)
    }

    pub fn config(&self) -> &DynamicBalancerConfig {
        &self.cfg
    }

    /// The placement routing uses now.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn statistics(&self) -> &ExpertStatistics {
        &self.stats
    }

    /// Completed iterations.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// Every rebalance so far, oldest first.
    pub fn reports(&self) -> &[RebalanceReport] {
        &self.reports
    }

    /// The plan made and not yet taken, if any.
    pub fn pending_migration(&self) -> Option<&MigrationPlan> {
        self.pending.as_ref()
    }

    /// The plan taken by the assembler and not yet applied, if any.
    pub fn in_flight_migration(&self) -> Option<&MigrationPlan> {
        self.in_flight.as_ref()
    }

    /// Every rank's counts of this iteration (`[ep, E]`), for strategies that gather them
    /// during dispatch (`update_statistic` was called with `ignore_allreduce`).
    pub fn update_gathered_statistic(&mut self, gathered: &Tensor) -> Result<()> {
        if !self.stats.awaiting_gathered() {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: gathered statistics arrived, but no update_statistic(last, ignore_allreduce) is waiting for them",
                self.cfg.layer_idx
            )));
        }
        self.stats.apply_gathered(gathered)
    }

    fn expect(&self, stage: Stage, hook: &str) -> Result<()> {
        if self.stage != stage {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: {hook} called in stage {:?}, expected {stage:?}",
                self.cfg.layer_idx, self.stage
            )));
        }
        Ok(())
    }

    /// Plans from the decayed loads and publishes the migration (end of a due iteration).
    fn rebalance(&mut self) -> Result<()> {
        if self.pending.is_some() || self.in_flight.is_some() {
            tracing::debug!(
                layer = self.cfg.layer_idx,
                iteration = self.iteration,
                "eplb: migration outstanding, rebalance deferred"
            );
            return Ok(());
        }
        let load = self.stats.load_factor().to_vec();
        if load.iter().all(|&x| x == 0.0) {
            // Nothing was routed since the last update: no evidence to move anything on.
            return Ok(());
        }
        let current = self.placement.slot_to_expert().to_vec();
        let out = plan(
            std::slice::from_ref(&load),
            self.cfg.num_slots,
            self.cfg.ep_size,
            self.cfg.num_nodes,
            self.cfg.num_groups,
            self.cfg.algorithm,
            Some(std::slice::from_ref(&current)),
        )?;
        let new = out.phy2log.into_iter().next().unwrap_or_else(|| current.clone());
        let moves: Vec<SlotMove> = current
            .iter()
            .zip(&new)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(slot, (&from_expert, &to_expert))| SlotMove {
                slot,
                from_expert,
                to_expert,
            })
            .collect();
        let report = RebalanceReport {
            layer_idx: self.cfg.layer_idx,
            iteration: self.iteration,
            algorithm: self.cfg.algorithm.name().into(),
            balancedness_before: out.balancedness_before.first().copied().unwrap_or(1.0),
            balancedness_after: out.balancedness.first().copied().unwrap_or(1.0),
            changed_slots: moves.len(),
            applied: moves.is_empty(),
        };
        tracing::info!(
            layer = report.layer_idx,
            iteration = report.iteration,
            algorithm = %report.algorithm,
            balancedness_before = report.balancedness_before,
            balancedness_after = report.balancedness_after,
            changed_slots = report.changed_slots,
            "eplb: rebalanced"
        );
        self.reports.push(report);
        // As TensorRT-LLM: the next plan sees only the load observed after this one.
        self.stats.reset_load_factor();
        if !moves.is_empty() {
            self.pending = Some(MigrationPlan {
                new_slot_to_expert: new,
                moves,
            });
        }
        Ok(())
    }
}

impl LoadBalancer for DynamicBalancer {
    fn is_dynamic(&self) -> bool {
        true
    }

    fn rebalance_reports(&self) -> &[RebalanceReport] {
        &self.reports
    }

    fn repeat_count(&self) -> usize {
        self.cfg.repeat_count
    }

    fn start_wait_gpu_stage(&mut self) -> Result<()> {
        self.expect(Stage::Idle, "start_wait_gpu_stage")?;
        self.stage = Stage::Waiting;
        Ok(())
    }

    fn done_wait_gpu_stage(&mut self) -> Result<()> {
        self.expect(Stage::Waiting, "done_wait_gpu_stage")?;
        self.stage = Stage::Running;
        self.counted_first = false;
        self.counted_last = false;
        Ok(())
    }

    fn update_statistic(&mut self, expert_ids: &Tensor, first: bool, last: bool, ignore_allreduce: bool) -> Result<()> {
        self.expect(Stage::Running, "update_statistic")?;
        if first == self.counted_first || self.counted_last {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: update_statistic(first = {first}, last = {last}) out of order (first chunk counted: {}, last chunk counted: {})",
                self.cfg.layer_idx, self.counted_first, self.counted_last
            )));
        }
        self.stats.count(expert_ids.as_i32("expert ids")?, first);
        self.counted_first = true;
        if last {
            self.stats.finish(ignore_allreduce)?;
            self.counted_last = true;
        }
        Ok(())
    }

    fn route(&mut self, expert_ids: &Tensor, use_dp: bool) -> Result<Tensor> {
        if matches!(self.stage, Stage::Waiting | Stage::SetCpu) {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: route called in stage {:?}",
                self.cfg.layer_idx, self.stage
            )));
        }
        self.placement
            .route(expert_ids, if use_dp { self.cfg.ep_rank } else { 0 })
    }

    fn start_set_cpu_stage(&mut self) -> Result<()> {
        self.expect(Stage::Running, "start_set_cpu_stage")?;
        self.stage = Stage::SetCpu;
        Ok(())
    }

    fn done_set_cpu_stage(&mut self) -> Result<()> {
        self.expect(Stage::SetCpu, "done_set_cpu_stage")?;
        if self.counted_first && !self.counted_last {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: the iteration ended without update_statistic(last = true)",
                self.cfg.layer_idx
            )));
        }
        if self.stats.awaiting_gathered() {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: update_statistic ran with ignore_allreduce on {} ranks, but no gathered statistics were applied before done_set_cpu_stage",
                self.cfg.layer_idx, self.cfg.ep_size
            )));
        }
        self.stage = Stage::Idle;
        self.iteration += 1;
        if self.iteration > self.cfg.warm_up_iters && self.iteration.is_multiple_of(self.cfg.layer_updates_per_iter) {
            self.rebalance()?;
        }
        Ok(())
    }

    fn take_migration(&mut self) -> Option<MigrationPlan> {
        let plan = self.pending.take()?;
        self.in_flight = Some(plan.clone());
        Some(plan)
    }

    fn migration_applied(&mut self, plan: &MigrationPlan) -> Result<()> {
        if self.stage != Stage::Idle {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: migration applied in stage {:?}; apply between forwards",
                self.cfg.layer_idx, self.stage
            )));
        }
        if self.in_flight.as_ref() != Some(plan) {
            return Err(MoeError::lifecycle(format!(
                "eplb layer {}: the applied migration is not the one handed out by take_migration",
                self.cfg.layer_idx
            )));
        }
        self.placement = Placement::new(plan.new_slot_to_expert.clone(), self.cfg.num_experts)?;
        self.in_flight = None;
        if let Some(r) = self.reports.iter_mut().rev().find(|r| !r.applied) {
            r.applied = true;
        }
        tracing::info!(
            layer = self.cfg.layer_idx,
            moved = plan.moves.len(),
            "eplb: migration applied, routing switched"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: Vec<i32>) -> Tensor {
        let n = v.len();
        Tensor::from_i32(vec![n, 1], v).unwrap()
    }

    fn iteration(b: &mut DynamicBalancer, v: Vec<i32>) -> Result<Tensor> {
        b.start_wait_gpu_stage()?;
        b.done_wait_gpu_stage()?;
        let t = ids(v);
        b.update_statistic(&t, true, true, false)?;
        let s = b.route(&t, false)?;
        b.start_set_cpu_stage()?;
        b.done_set_cpu_stage()?;
        Ok(s)
    }

    #[test]
    fn hooks_out_of_order_are_lifecycle_errors() {
        let cfg = DynamicBalancerConfig::new(0, 2, 2, 1, 0, 1);
        let mut b = DynamicBalancer::new(cfg, vec![0, 1], None).unwrap();
        assert!(b.done_wait_gpu_stage().is_err());
        b.start_wait_gpu_stage().unwrap();
        assert!(b.update_statistic(&ids(vec![0]), true, true, false).is_err());
        b.done_wait_gpu_stage().unwrap();
        assert!(b.update_statistic(&ids(vec![0]), false, true, false).is_err());
        b.update_statistic(&ids(vec![0]), true, false, false).unwrap();
        b.start_set_cpu_stage().unwrap();
        let e = b.done_set_cpu_stage().unwrap_err().to_string();
        assert!(e.contains("without update_statistic(last = true)"), "{e}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let cfg = DynamicBalancerConfig::new(0, 4, 4, 2, 0, 0);
        assert!(DynamicBalancer::new(cfg, vec![0, 1, 2, 3], None).is_err());
        let cfg = DynamicBalancerConfig::new(0, 4, 4, 2, 0, 1);
        assert!(DynamicBalancer::new(cfg.clone(), vec![0, 1, 2, 2], None).is_err());
        let mut ds = cfg;
        ds.algorithm = Algorithm::DeepSeek;
        ds.num_groups = 3;
        assert!(
            DynamicBalancer::new(ds, vec![0, 1, 2, 3], None)
                .unwrap_err()
                .to_string()
                .contains("num_groups")
        );
    }

    #[test]
    fn a_plan_is_published_and_routing_waits_for_it() {
        // 4 experts, 6 slots on 2 ranks; expert 3 is hot.
        let cfg = DynamicBalancerConfig::new(0, 4, 6, 2, 0, 1);
        let mut b = DynamicBalancer::new(cfg, vec![0, 1, 2, 2, 3, 0], None).unwrap();
        let before = iteration(&mut b, vec![3, 3, 3, 3, 3, 3, 1, 2]).unwrap();
        let plan = b.take_migration().expect("a plan after the first due iteration");
        assert!(b.take_migration().is_none());
        // Not applied yet: routing unchanged.
        let same = iteration(&mut b, vec![3, 3, 3, 3, 3, 3, 1, 2]).unwrap();
        assert_eq!(before.as_i32("s").unwrap(), same.as_i32("s").unwrap());
        b.migration_applied(&plan).unwrap();
        assert_eq!(b.placement().slot_to_expert(), &plan.new_slot_to_expert[..]);
        assert!(b.placement().replicas(3).len() >= 2);
        assert!(b.migration_applied(&plan).is_err());
    }
}
