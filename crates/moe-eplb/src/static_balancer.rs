//! Static EPLB (`layer_updates_per_iter == 0`): a fixed placement, no statistics, no
//! migration. Its only hook with an effect is `route`, which picks a replica per (token, k)
//! round-robin, offset by the EP rank under attention-DP so ranks spread over replicas.

use moe_core::{LoadBalancer, Result, Tensor};

use crate::placement::Placement;

/// The balancer of a layer with a fixed placement.
#[derive(Clone, Debug)]
pub struct StaticBalancer {
    placement: Placement,
    ep_rank: usize,
}

impl StaticBalancer {
    pub fn new(placement: Placement, ep_rank: usize) -> Self {
        StaticBalancer { placement, ep_rank }
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }
}

impl LoadBalancer for StaticBalancer {
    fn is_dynamic(&self) -> bool {
        false
    }

    fn start_wait_gpu_stage(&mut self) -> Result<()> {
        Ok(())
    }

    fn done_wait_gpu_stage(&mut self) -> Result<()> {
        Ok(())
    }

    fn update_statistic(&mut self, _: &Tensor, _: bool, _: bool, _: bool) -> Result<()> {
        // A static placement never changes, so there is nothing to count.
        Ok(())
    }

    fn route(&mut self, expert_ids: &Tensor, use_dp: bool) -> Result<Tensor> {
        self.placement.route(expert_ids, if use_dp { self.ep_rank } else { 0 })
    }

    fn start_set_cpu_stage(&mut self) -> Result<()> {
        Ok(())
    }

    fn done_set_cpu_stage(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_alternate_per_pair_and_rank() {
        let p = Placement::new(vec![0, 1, 0, 1], 2).unwrap();
        let ids = Tensor::from_i32(vec![2, 2], vec![0, 1, 0, 1]).unwrap();
        let mut b = StaticBalancer::new(p.clone(), 1);
        let s = b.route(&ids, false).unwrap();
        assert_eq!(s.as_i32("s").unwrap(), &[0, 3, 0, 3]);
        let s = b.route(&ids, true).unwrap();
        assert_eq!(s.as_i32("s").unwrap(), &[2, 1, 2, 1]);
        let bad = Tensor::from_i32(vec![1, 1], vec![7]).unwrap();
        assert!(b.route(&bad, false).is_err());
    }
}
