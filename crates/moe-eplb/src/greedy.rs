//! TensorRT-LLM's online placement (C++ `doReplication` + `doPlacement`, spec §C.5): greedy
//! replication by the largest per-replica load, then least-loaded-rank placement of the
//! replicas in descending size. It ignores nodes and migration cost; it is here to compare
//! against and to reproduce what TensorRT-LLM would do at runtime.

/// Replica count of every expert (sum = `num_slots`).
///
/// With no load at all the slots are spread evenly, the first `num_slots mod E` experts
/// getting one more. Otherwise every expert starts with one replica and each extra slot goes
/// to the expert with the largest `load / count`; the C++ max-heap of (value, id) breaks
/// ties toward the **larger** expert id, reproduced by scanning with `>=`.
pub(crate) fn do_replication(load: &[f64], num_slots: usize) -> Vec<usize> {
    let e = load.len();
    if e == 0 {
        return Vec::new();
    }
    if num_slots == e {
        return vec![1; e];
    }
    if load.iter().sum::<f64>() == 0.0 {
        return (0..e).map(|x| num_slots / e + usize::from(x < num_slots % e)).collect();
    }
    let mut cnt = vec![1usize; e];
    for _ in e..num_slots {
        let mut best = 0;
        let mut best_v = f64::NEG_INFINITY;
        for (x, (&l, &c)) in load.iter().zip(&cnt).enumerate() {
            let v = l / c as f64;
            if v >= best_v {
                best = x;
                best_v = v;
            }
        }
        cnt[best] += 1;
    }
    cnt
}

/// Slot table from replica counts: replicas of size `load / count`, sorted by size
/// descending then expert id ascending, each put into the next free local slot of the
/// least-loaded rank that still has one (ties toward the smaller rank, as the C++ min-heap
/// of (load, rank)).
pub(crate) fn do_placement(load: &[f64], cnt: &[usize], num_gpus: usize, slots_per_gpu: usize) -> Vec<usize> {
    let replicas = replicas_by_share(load, cnt);
    let mut rank_load = vec![0f64; num_gpus];
    let mut filled = vec![0usize; num_gpus];
    let mut slots = vec![0usize; num_gpus * slots_per_gpu];
    for (size, x) in replicas {
        let mut best: Option<usize> = None;
        for r in (0..num_gpus).filter(|&r| filled[r] < slots_per_gpu) {
            if best.is_none_or(|b| rank_load[r] < rank_load[b]) {
                best = Some(r);
            }
        }
        // Counts sum to the slot total, so some rank always has room.
        let Some(r) = best else { break };
        slots[r * slots_per_gpu + filled[r]] = x;
        filled[r] += 1;
        rank_load[r] += size;
    }
    slots
}

/// Every replica as (its share of its expert's load, expert): `cnt[x]` replicas of expert x,
/// by share descending, then expert id ascending.
pub(crate) fn replicas_by_share(load: &[f64], cnt: &[usize]) -> Vec<(f64, usize)> {
    let mut replicas: Vec<(f64, usize)> = cnt
        .iter()
        .enumerate()
        .flat_map(|(x, &c)| std::iter::repeat_n((load[x] / c as f64, x), c))
        .collect();
    replicas.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    replicas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::balancedness;

    #[test]
    fn replication_follows_the_largest_share_with_ties_to_the_larger_id() {
        assert_eq!(do_replication(&[8.0, 1.0, 1.0], 5), vec![3, 1, 1]);
        // 2 vs 2: the larger id wins the tie.
        assert_eq!(do_replication(&[2.0, 2.0], 3), vec![1, 2]);
        assert_eq!(do_replication(&[0.0, 0.0, 0.0], 8), vec![3, 3, 2]);
        assert_eq!(do_replication(&[5.0, 1.0], 2), vec![1, 1]);
    }

    #[test]
    fn placement_is_least_loaded_first() {
        let load = [8.0, 4.0, 2.0, 2.0];
        let cnt = do_replication(&load, 6);
        assert_eq!(cnt, vec![2, 2, 1, 1]);
        // Replicas: 4(e0) 4(e0) 2(e1) 2(e1) 2(e2) 2(e3) over 2 ranks of 3 slots.
        let slots = do_placement(&load, &cnt, 2, 3);
        assert_eq!(slots, vec![0, 1, 2, 0, 1, 3]);
        assert_eq!(balancedness(&load, &slots, 2), 1.0);
    }
}
