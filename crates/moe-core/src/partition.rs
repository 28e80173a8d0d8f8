//! Expert partition across EP ranks: which global slots this rank holds and which expert
//! each slot serves (TensorRT-LLM's `_compute_ep_partition` and EPLB slot tables).

use serde::{Deserialize, Serialize};

use crate::config::MoeConfig;
use crate::error::{MoeError, Result};

/// The slot layout of one rank.
///
/// Without EPLB there is one slot per expert and slot id = expert id. With EPLB there are
/// `num_slots` slots over all ranks, each rank holds `num_slots / ep_size` of them, and
/// `initial_global_assignments[slot]` names the expert a slot serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertPartition {
    pub num_experts: usize,
    pub num_slots: usize,
    pub ep_size: usize,
    pub ep_rank: usize,
    /// First global slot of this rank.
    pub slot_start: usize,
    /// One past the last global slot of this rank.
    pub slot_end: usize,
    /// Global slot -> expert, length `num_slots`.
    pub initial_global_assignments: Vec<usize>,
}

impl ExpertPartition {
    /// Computes the partition for `config`. `allow_non_divisible` is the backend's opt-in to
    /// expert counts that do not divide by `ep_size` (ranks then hold `E/ep` or `E/ep + 1`).
    pub fn compute(config: &MoeConfig, allow_non_divisible: bool) -> Result<ExpertPartition> {
        let e = config.num_experts;
        let ep = config.parallel.ep_size;
        let r = config.parallel.ep_rank;
        config.parallel.validate()?;
        match &config.eplb {
            None => {
                if e < ep {
                    return Err(MoeError::config(
                        "parallel.ep_size",
                        format!("{e} experts cannot be spread over {ep} EP ranks"),
                    ));
                }
                if !e.is_multiple_of(ep) && !allow_non_divisible {
                    return Err(MoeError::config(
                        "parallel.ep_size",
                        format!("{e} experts do not divide by ep_size {ep} and the backend needs equal partitions"),
                    ));
                }
                let (base, rem) = (e / ep, e % ep);
                let start = r * base + r.min(rem);
                let len = base + usize::from(r < rem);
                Ok(ExpertPartition {
                    num_experts: e,
                    num_slots: e,
                    ep_size: ep,
                    ep_rank: r,
                    slot_start: start,
                    slot_end: start + len,
                    initial_global_assignments: (0..e).collect(),
                })
            }
            Some(eplb) => {
                let slots = eplb.num_slots;
                if slots < e {
                    return Err(MoeError::config(
                        "eplb.num_slots",
                        format!("{slots} slots cannot hold {e} experts"),
                    ));
                }
                if slots % ep != 0 {
                    return Err(MoeError::config(
                        "eplb.num_slots",
                        format!("{slots} slots do not divide by ep_size {ep}"),
                    ));
                }
                let local = slots / ep;
                let table = match &eplb.initial_global_assignments {
                    Some(t) => {
                        if t.len() != slots {
                            return Err(MoeError::config(
                                "eplb.initial_global_assignments",
                                format!("has {} entries, expected num_slots = {slots}", t.len()),
                            ));
                        }
                        let mut seen = vec![false; e];
                        for (s, &x) in t.iter().enumerate() {
                            if x >= e {
                                return Err(MoeError::config(
                                    "eplb.initial_global_assignments",
                                    format!("slot {s} names expert {x}, but there are {e} experts"),
                                ));
                            }
                            seen[x] = true;
                        }
                        if let Some(missing) = seen.iter().position(|s| !s) {
                            return Err(MoeError::config(
                                "eplb.initial_global_assignments",
                                format!("expert {missing} has no slot"),
                            ));
                        }
                        t.clone()
                    }
                    None => (0..ep)
                        .flat_map(|rank| (0..local).map(move |j| (rank * e / ep + j) % e))
                        .collect(),
                };
                Ok(ExpertPartition {
                    num_experts: e,
                    num_slots: slots,
                    ep_size: ep,
                    ep_rank: r,
                    slot_start: r * local,
                    slot_end: (r + 1) * local,
                    initial_global_assignments: table,
                })
            }
        }
    }

    /// Local slot count (TensorRT-LLM's `expert_size_per_partition`).
    pub fn expert_size_per_partition(&self) -> usize {
        self.slot_end - self.slot_start
    }

    /// Expert served by each local slot.
    pub fn initial_local_expert_ids(&self) -> &[usize] {
        &self.initial_global_assignments[self.slot_start..self.slot_end]
    }

    /// Local index of a global slot id, if this rank holds it.
    pub fn local_slot(&self, global_slot: i32) -> Option<usize> {
        let s = usize::try_from(global_slot).ok()?;
        (self.slot_start..self.slot_end)
            .contains(&s)
            .then(|| s - self.slot_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, EplbConfig, RoutingMethod};

    fn cfg(e: usize, ep: usize, rank: usize) -> MoeConfig {
        let mut c = MoeConfig::new(e, 8, 8, DType::F32, RoutingMethod::Renormalize { top_k: 1 });
        c.parallel.ep_size = ep;
        c.parallel.ep_rank = rank;
        c
    }

    #[test]
    fn non_divisible_ranks_take_floor_or_ceil() {
        let parts: Vec<_> = (0..3)
            .map(|r| ExpertPartition::compute(&cfg(8, 3, r), true).unwrap())
            .collect();
        let ranges: Vec<_> = parts.iter().map(|p| (p.slot_start, p.slot_end)).collect();
        assert_eq!(ranges, vec![(0, 3), (3, 6), (6, 8)]);
        assert!(ExpertPartition::compute(&cfg(8, 3, 0), false).is_err());
        assert!(ExpertPartition::compute(&cfg(2, 3, 0), true).is_err());
    }

    #[test]
    fn eplb_default_assignment_wraps() {
        let mut c = cfg(4, 2, 1);
        c.eplb = Some(EplbConfig {
            num_slots: 6,
            layer_updates_per_iter: 0,
            initial_global_assignments: None,
        });
        let p = ExpertPartition::compute(&c, false).unwrap();
        // rank 0: 0,1,2 ; rank 1 starts at 1*4/2 = 2: 2,3,0
        assert_eq!(p.initial_global_assignments, vec![0, 1, 2, 2, 3, 0]);
        assert_eq!(p.initial_local_expert_ids(), &[2, 3, 0]);
        assert_eq!(p.local_slot(4), Some(1));
        assert_eq!(p.local_slot(1), None);
    }

    #[test]
    fn eplb_table_must_cover_every_expert() {
        let mut c = cfg(4, 2, 0);
        c.eplb = Some(EplbConfig {
            num_slots: 4,
            layer_updates_per_iter: 0,
            initial_global_assignments: Some(vec![0, 1, 1, 2]),
        });
        let err = ExpertPartition::compute(&c, false).unwrap_err().to_string();
        assert!(err.contains("expert 3 has no slot"), "{err}");
    }
}
