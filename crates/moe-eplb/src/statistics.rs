//! Expert-load statistics of one layer (spec §C.4): a per-iteration histogram of the
//! routed expert ids, summed over EP ranks, folded into a decayed load factor
//! `load[e] = load[e] * decay + global[e]` (decay 0.9 in TensorRT-LLM).
//!
//! Three ways in, as in TensorRT-LLM:
//! - default: local counts, then at the last stage an all-reduce (sum) through the layer's
//!   [`ProcessGroup`] and the decay update;
//! - `ignore_allreduce`: the communication strategy carries the local counts itself and hands
//!   back every rank's counts (`[ep, E]`), applied with [`ExpertStatistics::apply_gathered`];
//! - gathered ids (the legacy path): the ids of all ranks are already here, so counting them
//!   is the global histogram ([`ExpertStatistics::count_global_ids`]).
//!
//! Every rank must end with the same load factor, because every rank computes the same
//! placement from it; that is why a multi-rank layer never falls back to local counts.

use std::sync::Arc;
use std::time::Duration;

use moe_core::{Deadline, MoeError, ProcessGroup, Result, Tensor};

/// TensorRT-LLM's decay of the load factor per iteration.
pub const DEFAULT_DECAY: f64 = 0.9;

/// Decayed expert loads of one layer.
pub struct ExpertStatistics {
    decay: f64,
    /// This iteration's histogram (local, or global on the gathered-ids path).
    counts: Vec<u64>,
    load_factor: Vec<f64>,
    group: Option<Arc<dyn ProcessGroup>>,
    timeout: Duration,
    /// Local counts are complete and wait for [`ExpertStatistics::apply_gathered`].
    awaiting_gathered: bool,
}

impl std::fmt::Debug for ExpertStatistics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertStatistics")
            .field("decay", &self.decay)
            .field("counts", &self.counts)
            .field("load_factor", &self.load_factor)
            .field("group", &self.group.as_ref().map(|g| (g.kind(), g.rank(), g.size())))
            .field("awaiting_gathered", &self.awaiting_gathered)
            .finish()
    }
}

impl ExpertStatistics {
    /// `group` is the layer's EP communicator (`None`: a world of one); `timeout` bounds
    /// each all-reduce.
    pub fn new(
        num_experts: usize,
        decay: f64,
        group: Option<Arc<dyn ProcessGroup>>,
        timeout: Duration,
    ) -> Result<Self> {
        if num_experts == 0 {
            return Err(MoeError::config("num_experts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&decay) {
            return Err(MoeError::config(
                "eplb decay",
                format!("must be in [0, 1], got {decay}"),
            ));
        }
        Ok(ExpertStatistics {
            decay,
            counts: vec![0; num_experts],
            load_factor: vec![0.0; num_experts],
            group,
            timeout,
            awaiting_gathered: false,
        })
    }

    pub fn num_experts(&self) -> usize {
        self.counts.len()
    }

    /// The decayed loads the next placement is computed from.
    pub fn load_factor(&self) -> &[f64] {
        &self.load_factor
    }

    /// This iteration's counts so far.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Local counts wait for every rank's counts ([`ExpertStatistics::apply_gathered`]).
    pub fn awaiting_gathered(&self) -> bool {
        self.awaiting_gathered
    }

    /// Whether the layer spans more than one rank (then local counts are not global).
    pub fn is_multi_rank(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.size() > 1)
    }

    /// Zeroes the load factor (after a placement was computed from it, as TensorRT-LLM).
    pub fn reset_load_factor(&mut self) {
        self.load_factor.iter_mut().for_each(|x| *x = 0.0);
    }

    /// Adds `ids` to this iteration's histogram, starting a new one when `first`. Ids
    /// outside `0..E` (padding, invalid) are not counted, as TensorRT-LLM's kernel.
    pub fn count(&mut self, ids: &[i32], first: bool) {
        if first {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.awaiting_gathered = false;
        }
        let e = self.counts.len();
        for &id in ids {
            if let Some(c) = usize::try_from(id)
                .ok()
                .filter(|&x| x < e)
                .and_then(|x| self.counts.get_mut(x))
            {
                *c += 1;
            }
        }
    }

    /// Ends the iteration's counting (the last stage). Without `ignore_allreduce` the local
    /// counts are all-reduced over the group and applied; with it they are kept for
    /// [`ExpertStatistics::apply_gathered`] — unless the layer is a world of one, where local
    /// is global and they are applied at once.
    pub fn finish(&mut self, ignore_allreduce: bool) -> Result<()> {
        if ignore_allreduce && self.is_multi_rank() {
            self.awaiting_gathered = true;
            return Ok(());
        }
        let global: Vec<f64> = match (&self.group, ignore_allreduce) {
            (Some(g), false) if g.size() > 1 => {
                // f32 carries integer counts exactly up to 2^24 tokens*k per expert and
                // iteration, far above one iteration's routed pairs.
                let local: Vec<f32> = self.counts.iter().map(|&c| c as f32).collect();
                let t = Tensor::from_f32(vec![local.len()], local)?;
                let sum = g
                    .all_reduce_sum(&t, Deadline::after(self.timeout))?
                    .to_f32_vec("eplb statistic all-reduce")?;
                if sum.len() != self.counts.len() {
                    return Err(MoeError::shape(
                        "eplb statistic all-reduce",
                        format!("[{}]", self.counts.len()),
                        &[sum.len()],
                    ));
                }
                sum.into_iter().map(f64::from).collect()
            }
            _ => self.counts.iter().map(|&c| c as f64).collect(),
        };
        self.apply(&global);
        Ok(())
    }

    /// Applies every rank's counts of this iteration (`gathered` `[ep, E]`, f32 or i32),
    /// summed over ranks: the `ignore_allreduce` path.
    pub fn apply_gathered(&mut self, gathered: &Tensor) -> Result<()> {
        let e = self.counts.len();
        let shape = gathered.shape();
        if shape.len() != 2 || shape[1] != e {
            return Err(MoeError::shape("gathered eplb statistic", format!("[ep, {e}]"), shape));
        }
        let values = gathered.to_f32_vec("gathered eplb statistic")?;
        let mut global = vec![0f64; e];
        for row in values.chunks(e) {
            for (g, &v) in global.iter_mut().zip(row) {
                if !v.is_finite() || v < 0.0 {
                    return Err(MoeError::NonFinite {
                        what: "gathered eplb statistic".into(),
                        location: format!("value {v} (counts must be finite and non-negative)"),
                    });
                }
                *g += f64::from(v);
            }
        }
        self.apply(&global);
        self.awaiting_gathered = false;
        Ok(())
    }

    /// The legacy path: `ids` are every rank's routed ids, so their histogram is global;
    /// `first` starts the iteration, `last` applies the decay update.
    pub fn count_global_ids(&mut self, ids: &[i32], first: bool, last: bool) {
        self.count(ids, first);
        if last {
            let global: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
            self.apply(&global);
        }
    }

    fn apply(&mut self, global: &[f64]) {
        for (l, &g) in self.load_factor.iter_mut().zip(global) {
            *l = *l * self.decay + g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_update_by_hand() {
        let mut s = ExpertStatistics::new(3, 0.5, None, Duration::from_secs(1)).unwrap();
        s.count(&[0, 0, 2, -1, 7], true);
        s.finish(false).unwrap();
        assert_eq!(s.load_factor(), &[2.0, 0.0, 1.0]);
        s.count(&[1], true);
        s.count(&[1, 0], false);
        s.finish(false).unwrap();
        // 2*0.5 + 1, 0*0.5 + 2, 1*0.5 + 0
        assert_eq!(s.load_factor(), &[2.0, 2.0, 0.5]);
        assert!(ExpertStatistics::new(3, 1.5, None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn gathered_counts_sum_over_ranks() {
        let mut s = ExpertStatistics::new(2, 0.9, None, Duration::from_secs(1)).unwrap();
        let g = Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        s.apply_gathered(&g).unwrap();
        assert_eq!(s.load_factor(), &[4.0, 6.0]);
        let bad = Tensor::from_f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        assert!(
            s.apply_gathered(&bad)
                .unwrap_err()
                .to_string()
                .contains("gathered eplb statistic")
        );
        s.count_global_ids(&[1, 1], true, true);
        assert!((s.load_factor()[0] - 3.6).abs() < 1e-12 && (s.load_factor()[1] - 7.4).abs() < 1e-12);
    }
}
