//! A port of DeepSeek's EPLB reference (`deepseek-ai/EPLB`, `eplb.py`: `balanced_packing`,
//! `replicate_experts`, `rebalance_experts_hierarchical`, `rebalance_experts`), one layer at
//! a time (every step of the reference is row-wise).
//!
//! Faithfulness notes, because the outputs are compared slot for slot:
//! - the reference computes in float32 (`weight.float()`), so loads are rounded to `f32`
//!   and group sums, per-replica shares and pack weights are accumulated in `f32`;
//! - its descending sort is PyTorch's unstable CPU sort, i.e. libstdc++'s `std::sort`
//!   (introsort, [`introsort`]); the loads have no ties, but the replicas of one expert
//!   share its load exactly, and the order the sort leaves them in decides which slot gets
//!   which replica rank in `log2phy` (PyTorch builds with x86-simd-sort may order such ties
//!   differently; `phy2log` and `logcnt` do not depend on it);
//! - `min(...)` over packs and `max(dim=-1)` over experts take the first extremum.

use moe_core::{MoeError, Result};

use crate::plan::LayerPlan;

mod introsort;

/// Sizes of one planning problem.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub num_slots: usize,
    pub num_gpus: usize,
    pub num_nodes: usize,
    pub num_groups: usize,
}

/// `rebalance_experts` for one layer: the hierarchical policy when `num_groups % num_nodes
/// == 0`, else the same routine with one group and one node (the global policy).
pub(crate) fn rebalance_layer(load: &[f64], g: &Geometry) -> Result<LayerPlan> {
    let weight: Vec<f32> = load.iter().map(|&x| x as f32).collect();
    let (groups, nodes) = if g.num_groups.is_multiple_of(g.num_nodes) {
        (g.num_groups, g.num_nodes)
    } else {
        (1, 1)
    };
    let (phy2log, phyrank, _) = hierarchical(&weight, g.num_slots, groups, nodes, g.num_gpus)?;
    Ok(LayerPlan {
        slot_to_expert: phy2log,
        replica_rank: phyrank,
    })
}

/// Index order by descending weight, as `torch.sort(descending=True)` on CPU without the
/// x86-simd-sort path: libstdc++'s `std::sort` (introsort) over (value, index) pairs with
/// a value-only comparator. Ties matter here even though the loads have none: the replicas
/// of one expert share its load, and their order decides which physical slot gets which
/// replica rank (`log2phy`).
fn descending(weight: &[f32]) -> Vec<usize> {
    let mut v: Vec<(f32, usize)> = weight.iter().copied().zip(0..).collect();
    introsort::sort(&mut v, |a, b| a.0 > b.0);
    v.into_iter().map(|(_, i)| i).collect()
}

/// `balanced_packing`: `n` weighted items into `num_packs` packs of exactly `n / num_packs`
/// items. Returns (pack of each item, rank of the item inside its pack).
pub(crate) fn balanced_packing(weight: &[f32], num_packs: usize) -> (Vec<usize>, Vec<usize>) {
    let n = weight.len();
    let cap = n / num_packs;
    if cap == 1 {
        // The reference skips sorting here: item i goes to pack i.
        return ((0..n).collect(), vec![0; n]);
    }
    let mut pack_index = vec![0usize; n];
    let mut rank_in_pack = vec![0usize; n];
    let mut pack_weights = vec![0f32; num_packs];
    let mut pack_items = vec![0usize; num_packs];
    for item in descending(weight) {
        let mut best: Option<usize> = None;
        for p in (0..num_packs).filter(|&p| pack_items[p] < cap) {
            // Strict `<`: Python's `min` keeps the first of equal keys.
            if best.is_none_or(|b| pack_weights[p] < pack_weights[b]) {
                best = Some(p);
            }
        }
        // `n == cap * num_packs`, so a pack with room always exists.
        let p = best.unwrap_or(0);
        pack_index[item] = p;
        rank_in_pack[item] = pack_items[p];
        pack_weights[p] += weight[item];
        pack_items[p] += 1;
    }
    (pack_index, rank_in_pack)
}

/// `replicate_experts`: physical `i < n` is logical `i`; each further physical expert
/// replicates the logical expert with the largest `weight / count` (first on ties).
/// Returns (phy2log, replica rank, logcnt).
pub(crate) fn replicate_experts(weight: &[f32], num_phy: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let n = weight.len();
    let mut phy2log: Vec<usize> = (0..num_phy).collect();
    let mut rank = vec![0usize; num_phy];
    let mut logcnt = vec![1usize; n];
    for i in n..num_phy {
        let mut best = 0;
        let mut best_v = f32::NEG_INFINITY;
        for (j, (&w, &c)) in weight.iter().zip(&logcnt).enumerate() {
            let v = w / c as f32;
            if v > best_v {
                best = j;
                best_v = v;
            }
        }
        phy2log[i] = best;
        rank[i] = logcnt[best];
        logcnt[best] += 1;
    }
    (phy2log, rank, logcnt)
}

/// Inverse of a permutation.
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// `rebalance_experts_hierarchical` for one layer: groups to nodes, replication inside
/// each node, replicas to the node's GPUs. Returns (phy2log, replica rank, logcnt).
pub(crate) fn hierarchical(
    weight: &[f32],
    num_physical: usize,
    num_groups: usize,
    num_nodes: usize,
    num_gpus: usize,
) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let e = weight.len();
    if num_groups == 0 || !e.is_multiple_of(num_groups) {
        return Err(MoeError::config(
            "num_groups",
            format!("{e} experts do not divide into {num_groups} groups (DeepSeek's hierarchical policy)"),
        ));
    }
    if num_nodes == 0 || !num_groups.is_multiple_of(num_nodes) || !num_gpus.is_multiple_of(num_nodes) {
        return Err(MoeError::config(
            "num_nodes",
            format!("{num_nodes} nodes must divide both {num_groups} groups and {num_gpus} GPUs"),
        ));
    }
    if num_gpus == 0 || !num_physical.is_multiple_of(num_gpus) || num_physical < e {
        return Err(MoeError::config(
            "num_slots",
            format!("{num_physical} slots must be >= {e} experts and divide by {num_gpus} GPUs"),
        ));
    }
    let group_size = e / num_groups;
    let groups_per_node = num_groups / num_nodes;
    let per_gpu = num_physical / num_gpus;
    let log_per_node = e / num_nodes;
    let phy_per_node = num_physical / num_nodes;

    // Step 1: pack groups onto nodes; `log2mlog` renumbers experts node-major.
    let tokens_per_group: Vec<f32> = weight
        .chunks(group_size)
        .map(|g| g.iter().fold(0f32, |a, &b| a + b))
        .collect();
    let (group_pack, group_rank) = balanced_packing(&tokens_per_group, num_nodes);
    let log2mlog: Vec<usize> = (0..e)
        .map(|x| {
            let g = x / group_size;
            (group_pack[g] * groups_per_node + group_rank[g]) * group_size + x % group_size
        })
        .collect();
    let mlog2log = inverse(&log2mlog);

    let mut pphy2log = vec![0usize; num_physical];
    let mut pphyrank = vec![0usize; num_physical];
    let mut mlogcnt = vec![0usize; e];
    for node in 0..num_nodes {
        // Step 2: replicate the node's experts into its physical slots.
        let tokens_per_mlog: Vec<f32> = (0..log_per_node)
            .map(|i| weight[mlog2log[node * log_per_node + i]])
            .collect();
        let (phy2mlog, phyrank, cnt) = replicate_experts(&tokens_per_mlog, phy_per_node);

        // Step 3: pack the node's replicas onto its GPUs.
        let tokens_per_phy: Vec<f32> = phy2mlog.iter().map(|&m| tokens_per_mlog[m] / cnt[m] as f32).collect();
        let (pack, rank_in_pack) = balanced_packing(&tokens_per_phy, num_gpus / num_nodes);
        let phy2pphy: Vec<usize> = pack.iter().zip(&rank_in_pack).map(|(&p, &r)| p * per_gpu + r).collect();
        let pphy2phy = inverse(&phy2pphy);

        // Step 4: back to global logical ids.
        for (q, &p) in pphy2phy.iter().enumerate() {
            pphy2log[node * phy_per_node + q] = mlog2log[phy2mlog[p] + node * log_per_node];
            pphyrank[node * phy_per_node + q] = phyrank[p];
        }
        mlogcnt[node * log_per_node..(node + 1) * log_per_node].copy_from_slice(&cnt);
    }
    let logcnt = log2mlog.iter().map(|&m| mlogcnt[m]).collect();
    Ok((pphy2log, pphyrank, logcnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_fills_the_lightest_open_pack() {
        // Descending: 9 (pack 0), 7 (pack 1), 5 (pack 1: 7 < 9), 2 (pack 0, pack 1 full).
        let (pack, rank) = balanced_packing(&[5.0, 9.0, 2.0, 7.0], 2);
        assert_eq!(pack, vec![1, 0, 0, 1]);
        assert_eq!(rank, vec![1, 0, 1, 0]);
        assert_eq!(balanced_packing(&[1.0, 2.0], 2), (vec![0, 1], vec![0, 0]));
    }

    #[test]
    fn replication_takes_the_largest_share() {
        let (p2l, rank, cnt) = replicate_experts(&[6.0, 3.0, 1.0], 5);
        // Shares 6, 3, 1 -> expert 0; then 3, 3, 1: the first max is expert 0 again.
        assert_eq!(p2l, vec![0, 1, 2, 0, 0]);
        assert_eq!(rank, vec![0, 0, 0, 1, 2]);
        assert_eq!(cnt, vec![3, 1, 1]);
    }

    #[test]
    fn hierarchical_keeps_groups_on_nodes() {
        // 4 experts in 2 groups, 2 nodes, 4 GPUs, 4 slots: each node gets one whole group.
        let (p2l, _, cnt) = hierarchical(&[1.0, 8.0, 4.0, 2.0], 4, 2, 2, 4).unwrap();
        assert_eq!(cnt, vec![1; 4]);
        let node0: Vec<usize> = p2l[..2].iter().map(|x| x / 2).collect();
        assert_eq!(node0[0], node0[1]);
        assert!(hierarchical(&[1.0; 6], 6, 4, 1, 2).is_err());
    }
}
