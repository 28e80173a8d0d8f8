//! The crate's default placement algorithm: several constructions, each refined by a local
//! search that lowers the most loaded GPU, the best one kept; with a previous placement,
//! migration-aware variants that keep slots in place, under an optional cap on changed slots.
//!
//! Constructions (fresh):
//! 1. replication by largest marginal gain (each extra replica to the expert with the largest
//!    `load / count`, which minimizes the largest replica share), then LPT placement with
//!    per-GPU slot capacity;
//! 2. DeepSeek's plan (so the result is never less balanced than DeepSeek's);
//! 3. TensorRT-LLM's greedy plan.
//!
//! The local search takes the most loaded GPU and applies the best of two moves while the
//! GPU's load strictly drops and no GPU it touches reaches the old maximum: swapping one of
//! its slots with a lighter slot elsewhere, or re-pointing a slot of an expert with spare
//! replicas at one of its experts (changing replica counts, which DeepSeek fixes up front).
//! Each accepted move lowers the descending-sorted GPU load vector lexicographically, so the
//! search terminates.
//!
//! With a previous placement (the one the weights are in now):
//! - the best fresh plan, with GPUs relabeled (Hungarian assignment maximizing the experts a
//!   GPU already holds) and experts kept in their old slot inside a GPU: same balance,
//!   fewer moved slots;
//! - an anchored plan: keep each expert's old slots up to its new replica count, fill the
//!   freed slots least-loaded first, then search;
//! - the previous placement itself, searched with the cap (moves ranked by load drop per
//!   changed slot).
//!
//! Among those within `max_changed_slots`, the most balanced wins; near-ties (relative
//! 1e-9) go to fewer changed slots.

use moe_core::Result;

mod search;

use self::search::{Layout, changed};
use crate::deepseek::{self, Geometry};
use crate::greedy;
use crate::plan::counts_of;

/// Relative tolerance under which two max loads are the same balance.
const TIE: f64 = 1e-9;

/// Plans one layer; see the module docs.
pub(crate) fn plan_layer(
    load: &[f64],
    g: &Geometry,
    previous: Option<&[usize]>,
    max_changed_slots: Option<usize>,
) -> Result<Vec<usize>> {
    let spg = g.num_slots / g.num_gpus;
    let fresh = best_fresh(load, g)?;
    let Some(prev) = previous else {
        return Ok(fresh);
    };
    let limit = max_changed_slots.unwrap_or(usize::MAX);
    let mut candidates: Vec<Vec<usize>> = Vec::new();

    let relabeled = relabel(&fresh, prev, load.len(), g.num_gpus, spg);
    let target = counts_of(&fresh, load.len());
    candidates.push(relabeled);
    let mut anchored = Layout::new(load, anchored(load, &target, prev, g.num_gpus, spg), g.num_gpus, spg);
    if changed(&anchored.slots, prev) <= limit {
        anchored.improve(Some((prev, limit)));
        candidates.push(anchored.slots);
    }
    let mut kept = Layout::new(load, prev.to_vec(), g.num_gpus, spg);
    kept.improve(Some((prev, limit)));
    candidates.push(kept.slots);

    let mut best: Option<(f64, usize, Vec<usize>)> = None;
    for c in candidates {
        let n = changed(&c, prev);
        if n > limit {
            continue;
        }
        let m = max_of(&crate::plan::gpu_loads(load, &c, g.num_gpus));
        let better = match &best {
            None => true,
            Some((bm, bn, _)) => m < bm - TIE * bm || (m <= bm + TIE * bm && n < *bn),
        };
        if better {
            best = Some((m, n, c));
        }
    }
    // The previous placement searched under the cap is always within it.
    Ok(best.map_or_else(|| prev.to_vec(), |(_, _, c)| c))
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// The most balanced of the fresh constructions after local search.
fn best_fresh(load: &[f64], g: &Geometry) -> Result<Vec<usize>> {
    let spg = g.num_slots / g.num_gpus;
    let mut starts = vec![lpt(load, &marginal_replication(load, g.num_slots), g.num_gpus, spg)];
    // DeepSeek's own divisibility rules (experts into groups) may not hold for inputs the
    // other algorithms accept; then there is no DeepSeek plan to compare against.
    if let Ok(ds) = deepseek::rebalance_layer(load, g) {
        starts.push(ds.slot_to_expert);
    }
    starts.push(greedy::do_placement(
        load,
        &greedy::do_replication(load, g.num_slots),
        g.num_gpus,
        spg,
    ));
    let mut best: Option<(f64, Vec<usize>)> = None;
    for s in starts {
        let mut lay = Layout::new(load, s, g.num_gpus, spg);
        lay.improve(None);
        let m = max_of(&lay.gpu);
        if best.as_ref().is_none_or(|(bm, _)| m < *bm) {
            best = Some((m, lay.slots));
        }
    }
    Ok(best.map(|(_, s)| s).unwrap_or_default())
}

/// Each extra slot to the expert with the largest `load / count` (first on ties).
fn marginal_replication(load: &[f64], num_slots: usize) -> Vec<usize> {
    let mut cnt = vec![1usize; load.len()];
    for _ in load.len()..num_slots {
        let mut best = 0;
        let mut best_v = f64::NEG_INFINITY;
        for (x, (&l, &c)) in load.iter().zip(&cnt).enumerate() {
            let v = l / c as f64;
            if v > best_v {
                best = x;
                best_v = v;
            }
        }
        cnt[best] += 1;
    }
    cnt
}

/// Longest-processing-time placement with capacity: replicas by descending share, each on
/// the least-loaded GPU with a free slot; on equal loads a GPU not yet holding the expert
/// wins (a second replica on the same GPU balances nothing).
fn lpt(load: &[f64], cnt: &[usize], num_gpus: usize, spg: usize) -> Vec<usize> {
    let replicas = greedy::replicas_by_share(load, cnt);
    let mut gpu = vec![0f64; num_gpus];
    let mut filled = vec![0usize; num_gpus];
    let mut slots = vec![0usize; num_gpus * spg];
    for (share, x) in replicas {
        let holds = |r: usize, slots: &[usize], filled: &[usize]| slots[r * spg..r * spg + filled[r]].contains(&x);
        let mut best: Option<usize> = None;
        for r in (0..num_gpus).filter(|&r| filled[r] < spg) {
            best = match best {
                None => Some(r),
                Some(b) if gpu[r] < gpu[b] => Some(r),
                Some(b) if gpu[r] == gpu[b] && holds(b, &slots, &filled) && !holds(r, &slots, &filled) => Some(r),
                keep => keep,
            };
        }
        let Some(r) = best else { break };
        slots[r * spg + filled[r]] = x;
        filled[r] += 1;
        gpu[r] += share;
    }
    slots
}

/// Keeps each expert's previous slots up to its target replica count (earliest slots
/// first), then fills the freed slots with the missing replicas, largest share first, on
/// the least-loaded GPU that has a freed slot.
fn anchored(load: &[f64], target: &[usize], prev: &[usize], num_gpus: usize, spg: usize) -> Vec<usize> {
    let mut kept = vec![0usize; load.len()];
    let mut slots: Vec<Option<usize>> = prev
        .iter()
        .map(|&x| {
            (kept[x] < target[x]).then(|| {
                kept[x] += 1;
                x
            })
        })
        .collect();
    let share = |x: usize| {
        if target[x] == 0 {
            0.0
        } else {
            load[x] / target[x] as f64
        }
    };
    let mut gpu = vec![0f64; num_gpus];
    for (s, x) in slots.iter().enumerate() {
        if let Some(x) = *x {
            gpu[s / spg] += share(x);
        }
    }
    let mut missing: Vec<usize> = (0..load.len())
        .flat_map(|x| std::iter::repeat_n(x, target[x] - kept[x]))
        .collect();
    missing.sort_by(|&a, &b| {
        share(b)
            .partial_cmp(&share(a))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for x in missing {
        let free = (0..slots.len()).filter(|&s| slots[s].is_none());
        // The free slot on the lightest GPU (earliest slot on ties).
        let Some(s) = free.min_by(|&a, &b| {
            gpu[a / spg]
                .partial_cmp(&gpu[b / spg])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        }) else {
            break;
        };
        slots[s] = Some(x);
        gpu[s / spg] += share(x);
    }
    slots.into_iter().zip(prev).map(|(s, &p)| s.unwrap_or(p)).collect()
}

/// `fresh` with its GPUs permuted onto the previous GPUs that already hold most of their
/// experts, and inside each GPU every expert that was there kept in its old slot.
fn relabel(fresh: &[usize], prev: &[usize], num_experts: usize, num_gpus: usize, spg: usize) -> Vec<usize> {
    let bag = |t: &[usize], r: usize| counts_of(&t[r * spg..(r + 1) * spg], num_experts);
    let new_bags: Vec<Vec<usize>> = (0..num_gpus).map(|r| bag(fresh, r)).collect();
    let old_bags: Vec<Vec<usize>> = (0..num_gpus).map(|r| bag(prev, r)).collect();
    // cost[new][old] = -(experts both hold), so the minimum assignment keeps the most.
    let cost: Vec<Vec<i64>> = new_bags
        .iter()
        .map(|nb| {
            old_bags
                .iter()
                .map(|ob| -(nb.iter().zip(ob).map(|(a, b)| (*a).min(*b)).sum::<usize>() as i64))
                .collect()
        })
        .collect();
    let assign = hungarian(&cost);
    let mut out = prev.to_vec();
    for (new_gpu, &old_gpu) in assign.iter().enumerate() {
        let mut left = new_bags[new_gpu].clone();
        let range = old_gpu * spg..(old_gpu + 1) * spg;
        let mut open = Vec::new();
        for s in range {
            let x = prev[s];
            if left[x] > 0 {
                left[x] -= 1;
            } else {
                open.push(s);
            }
        }
        let rest = left.iter().enumerate().flat_map(|(x, &c)| std::iter::repeat_n(x, c));
        for (s, x) in open.into_iter().zip(rest) {
            out[s] = x;
        }
    }
    out
}

/// Minimum-cost perfect assignment of rows to columns of a square matrix (the O(n^3)
/// potentials form of the Hungarian method). Returns the column of every row.
fn hungarian(cost: &[Vec<i64>]) -> Vec<usize> {
    let n = cost.len();
    const INF: i64 = i64::MAX / 4;
    // 1-based arrays with a virtual row/column 0, as in the textbook formulation.
    let mut u = vec![0i64; n + 1];
    let mut v = vec![0i64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![INF; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = INF;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut row_to_col = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            row_to_col[p[j] - 1] = j - 1;
        }
    }
    row_to_col
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::balancedness;

    fn geometry(s: usize, g: usize) -> Geometry {
        Geometry {
            num_slots: s,
            num_gpus: g,
            num_nodes: 1,
            num_groups: 1,
        }
    }

    #[test]
    fn hungarian_finds_the_cheapest_assignment() {
        let cost = vec![vec![4, 1, 3], vec![2, 0, 5], vec![3, 2, 2]];
        assert_eq!(hungarian(&cost), vec![1, 0, 2]);
    }

    #[test]
    fn relabeling_keeps_experts_where_they_are() {
        // The same placement with its GPUs swapped and slots shuffled changes nothing.
        let prev = vec![0, 1, 2, 3];
        let fresh = vec![3, 2, 1, 0];
        assert_eq!(relabel(&fresh, &prev, 4, 2, 2), prev);
    }

    #[test]
    fn local_search_reaches_the_perfect_split() {
        let load = [7.0, 5.0, 4.0, 3.0, 1.0, 0.0];
        let g = geometry(6, 2);
        let slots = plan_layer(&load, &g, None, None).unwrap();
        assert_eq!(balancedness(&load, &slots, 2), 1.0);
    }

    #[test]
    fn the_cap_limits_changed_slots() {
        // Both hot experts start on GPU 0; separating them takes one swap = two slots.
        let load = [10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let g = geometry(8, 4);
        let prev: Vec<usize> = (0..8).collect();
        for cap in [0, 1] {
            assert_eq!(
                plan_layer(&load, &g, Some(&prev), Some(cap)).unwrap(),
                prev,
                "cap {cap}"
            );
        }
        let two = plan_layer(&load, &g, Some(&prev), Some(2)).unwrap();
        assert_eq!(changed(&two, &prev), 2);
        assert!((balancedness(&load, &two, 4) - 6.5 / 11.0).abs() < 1e-12);
        let free = plan_layer(&load, &g, Some(&prev), None).unwrap();
        assert_eq!(changed(&free, &prev), 2, "no more moves than the balance needs");
    }
}
