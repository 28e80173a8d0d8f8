//! A placement: which expert every global slot serves, the replicas of every expert, and
//! the expert-to-slot routing over them that static and dynamic balancers share.

use moe_core::{MoeError, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Slot -> expert table with its inverse (expert -> slots, ascending).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    num_experts: usize,
    slot_to_expert: Vec<usize>,
    replicas: Vec<Vec<i32>>,
}

impl Placement {
    /// Builds the inverse table; every expert needs at least one slot.
    pub fn new(slot_to_expert: Vec<usize>, num_experts: usize) -> Result<Placement> {
        let mut replicas = vec![Vec::new(); num_experts];
        for (slot, &e) in slot_to_expert.iter().enumerate() {
            let r = replicas.get_mut(e).ok_or_else(|| {
                MoeError::config(
                    "eplb placement",
                    format!("slot {slot} names expert {e}, but there are {num_experts} experts"),
                )
            })?;
            r.push(i32::try_from(slot).map_err(|_| MoeError::config("eplb placement", "too many slots for i32 ids"))?);
        }
        if let Some(e) = replicas.iter().position(Vec::is_empty) {
            return Err(MoeError::config("eplb placement", format!("expert {e} has no slot")));
        }
        Ok(Placement {
            num_experts,
            slot_to_expert,
            replicas,
        })
    }

    pub fn num_slots(&self) -> usize {
        self.slot_to_expert.len()
    }

    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    pub fn slot_to_expert(&self) -> &[usize] {
        &self.slot_to_expert
    }

    /// Slots serving `expert`, ascending.
    pub fn replicas(&self, expert: usize) -> &[i32] {
        &self.replicas[expert]
    }

    /// Maps expert ids (any shape, i32) to global slot ids of the same shape.
    ///
    /// The replica of flattened entry `i` is `(i + rank_offset) mod count`: round-robin over
    /// the (token, k) pairs so one hot expert's tokens spread over its replicas, and with
    /// attention-DP each rank passes its EP rank as `rank_offset`, so ranks start their
    /// round-robin at different replicas (TensorRT-LLM's `offset_by_ep_rank`).
    pub fn route(&self, expert_ids: &Tensor, rank_offset: usize) -> Result<Tensor> {
        let ids = expert_ids.as_i32("expert ids")?;
        let e = self.num_experts;
        let slots = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let expert = usize::try_from(id).ok().filter(|&x| x < e).ok_or_else(|| {
                    MoeError::config("expert ids", format!("entry {i} = {id} is not an expert id (0..{e})"))
                })?;
                let r = &self.replicas[expert];
                Ok(r[(i + rank_offset) % r.len()])
            })
            .collect::<Result<Vec<i32>>>()?;
        Tensor::from_i32(expert_ids.shape().to_vec(), slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_lists_every_replica() {
        let p = Placement::new(vec![0, 1, 2, 2, 3, 0], 4).unwrap();
        assert_eq!(p.replicas(0), &[0, 5]);
        assert_eq!(p.replicas(2), &[2, 3]);
        assert_eq!(p.num_slots(), 6);
    }

    #[test]
    fn uncovered_or_unknown_experts_are_refused() {
        assert!(
            Placement::new(vec![0, 1, 1], 3)
                .unwrap_err()
                .to_string()
                .contains("expert 2 has no slot")
        );
        assert!(
            Placement::new(vec![0, 4], 2)
                .unwrap_err()
                .to_string()
                .contains("names expert 4")
        );
    }
}
