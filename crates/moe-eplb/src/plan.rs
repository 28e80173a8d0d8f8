//! The common planning API: [`plan`] validates per-layer expert loads and a geometry
//! (slots, GPUs, nodes, groups), runs one [`Algorithm`] per layer and reports the placement
//! in DeepSeek's vocabulary (`phy2log`, `log2phy`, `logcnt`) together with the balancedness
//! before and after and the number of slots that change.
//!
//! Balancedness is mean GPU load / max GPU load, where a GPU's load is the sum over its
//! slots of `load[expert] / logcnt[expert]` (every replica takes an equal share of its
//! expert's tokens). The mean does not depend on the placement, so maximizing balancedness
//! is minimizing the most loaded GPU.

use moe_core::{MoeError, Result, limits};
use serde::{Deserialize, Serialize};

use crate::{deepseek, default, greedy};

/// A placement algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Algorithm {
    /// DeepSeek's `rebalance_experts` (hierarchical when `num_groups % num_nodes == 0`,
    /// global otherwise), bit-for-bit with the reference in f32.
    #[serde(rename = "deepseek")]
    DeepSeek,
    /// TensorRT-LLM's online algorithm: greedy replication, least-loaded placement.
    Greedy,
    /// This crate's algorithm: the best of several constructions refined by local search,
    /// never worse than DeepSeek's; with a previous placement it keeps slots in place and
    /// changes at most `max_changed_slots` slots per layer (`None` = no limit, but still the
    /// fewest changes among equally balanced placements).
    Default {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_changed_slots: Option<usize>,
    },
}

impl std::default::Default for Algorithm {
    fn default() -> Self {
        Algorithm::Default {
            max_changed_slots: None,
        }
    }
}

impl Algorithm {
    /// `deepseek`, `greedy` or `default`, as the CLI spells them.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::DeepSeek => "deepseek",
            Algorithm::Greedy => "greedy",
            Algorithm::Default { .. } => "default",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = MoeError;

    fn from_str(s: &str) -> Result<Algorithm> {
        match s {
            "deepseek" => Ok(Algorithm::DeepSeek),
            "greedy" => Ok(Algorithm::Greedy),
            "default" => Ok(Algorithm::default()),
            other => Err(MoeError::config(
                "eplb algorithm",
                format!("unknown algorithm `{other}` (expected deepseek, greedy or default)"),
            )),
        }
    }
}

/// The planner's input file: `{"load": [[...], ...]}`, one row of expert loads per layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    pub load: Vec<Vec<f64>>,
}

/// A plan for every layer. Also the `--previous` format: only `phy2log` is required when
/// reading one back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOutput {
    /// `[L][num_slots]`: the expert every global slot serves.
    pub phy2log: Vec<Vec<usize>>,
    /// `[L][E][max replicas over all layers]`: slots of each expert, by replica rank, -1 padded.
    #[serde(default)]
    pub log2phy: Vec<Vec<Vec<i64>>>,
    /// `[L][E]`: replicas of each expert.
    #[serde(default)]
    pub logcnt: Vec<Vec<usize>>,
    /// `[L]`: balancedness of the new placement.
    #[serde(default)]
    pub balancedness: Vec<f64>,
    /// `[L]`: balancedness of the placement it replaces (the previous one, or TensorRT-LLM's
    /// default assignment, which is the identity when there are no redundant slots).
    #[serde(default)]
    pub balancedness_before: Vec<f64>,
    /// `[L]`: slots whose expert differs from the placement it replaces.
    #[serde(default)]
    pub changed_slots: Vec<usize>,
}

/// TensorRT-LLM's default slot table: slot `(rank, i)` serves `(rank * E / ep + i) mod E`
/// (redundant slots wrap into the next rank's experts). The identity when `num_slots == E`.
pub fn default_assignment(num_experts: usize, num_slots: usize, num_gpus: usize) -> Vec<usize> {
    if num_experts == 0 || num_gpus == 0 {
        return Vec::new();
    }
    let local = num_slots / num_gpus;
    (0..num_gpus)
        .flat_map(|r| (0..local).map(move |j| (r * num_experts / num_gpus + j) % num_experts))
        .collect()
}

/// Replica count of every expert in a slot table (experts past `num_experts` are ignored;
/// callers validate tables first).
pub(crate) fn counts_of(slot_to_expert: &[usize], num_experts: usize) -> Vec<usize> {
    let mut cnt = vec![0usize; num_experts];
    for &e in slot_to_expert {
        if let Some(c) = cnt.get_mut(e) {
            *c += 1;
        }
    }
    cnt
}

/// Load of every GPU: the sum over its slots of `load[e] / replicas(e)`. GPUs hold
/// consecutive slot ranges of `slot_to_expert.len() / num_gpus` slots.
pub fn gpu_loads(load: &[f64], slot_to_expert: &[usize], num_gpus: usize) -> Vec<f64> {
    let cnt = counts_of(slot_to_expert, load.len());
    let per = slot_to_expert.len().checked_div(num_gpus).unwrap_or(0);
    let mut out = vec![0.0; num_gpus];
    if per == 0 {
        return out;
    }
    for (s, &e) in slot_to_expert.iter().enumerate() {
        if let (Some(g), Some(&l)) = (out.get_mut(s / per), load.get(e)) {
            *g += l / cnt[e] as f64;
        }
    }
    out
}

/// Mean GPU load / max GPU load (1 for an all-zero load: nothing to balance).
pub fn balancedness(load: &[f64], slot_to_expert: &[usize], num_gpus: usize) -> f64 {
    ratio(&gpu_loads(load, slot_to_expert, num_gpus))
}

pub(crate) fn ratio(gpu: &[f64]) -> f64 {
    let max = gpu.iter().copied().fold(0.0, f64::max);
    if gpu.is_empty() || max <= 0.0 {
        return 1.0;
    }
    gpu.iter().sum::<f64>() / gpu.len() as f64 / max
}

/// Checks the geometry every algorithm needs: `num_experts <= num_slots`, slots divide by
/// GPUs, GPUs by nodes. DeepSeek's extra conditions are checked by [`plan`] when it runs.
pub fn validate_geometry(
    num_experts: usize,
    num_slots: usize,
    num_gpus: usize,
    num_nodes: usize,
    num_groups: usize,
) -> Result<()> {
    if num_experts == 0 {
        return Err(MoeError::config("load", "layers have no experts"));
    }
    // Bounds first: every table below is sized by these numbers.
    limits::check_max("num_slots", num_slots, limits::MAX_SLOTS)?;
    if num_slots < num_experts {
        return Err(MoeError::config(
            "num_slots",
            format!("{num_slots} slots cannot hold {num_experts} experts"),
        ));
    }
    if num_gpus == 0 {
        return Err(MoeError::config("num_gpus", "must be at least 1"));
    }
    if !num_slots.is_multiple_of(num_gpus) {
        return Err(MoeError::config(
            "num_slots",
            format!("{num_slots} slots do not divide by num_gpus {num_gpus}"),
        ));
    }
    if num_nodes == 0 {
        return Err(MoeError::config("num_nodes", "must be at least 1"));
    }
    if !num_gpus.is_multiple_of(num_nodes) {
        return Err(MoeError::config(
            "num_gpus",
            format!("{num_gpus} GPUs do not divide by num_nodes {num_nodes}"),
        ));
    }
    if num_groups == 0 {
        return Err(MoeError::config("num_groups", "must be at least 1"));
    }
    Ok(())
}

/// Checks that every row of `load` has `num_experts` finite, non-negative entries.
/// Checks a load table (`load[layer][expert]`): at least one layer, rows of equal length,
/// every load finite and non-negative, each layer's total within f64 range (a balancedness of
/// `inf` helps nobody). Returns the number of experts; errors name the offending entry.
pub fn validate_load(load: &[Vec<f64>]) -> Result<usize> {
    let first = load.first().ok_or_else(|| MoeError::config("load", "has no layers"))?;
    let e = first.len();
    limits::check_max("load (layers)", load.len(), limits::MAX_LAYERS)?;
    limits::check_max("load[0] (experts)", e, limits::MAX_EXPERTS)?;
    for (l, row) in load.iter().enumerate() {
        if row.len() != e {
            return Err(MoeError::config(
                format!("load[{l}]"),
                format!(
                    "has {} experts, but layer 0 has {e} (rows must have equal length)",
                    row.len()
                ),
            ));
        }
        if let Some((x, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(MoeError::config(
                format!("load[{l}][{x}]"),
                format!("expert load must be finite and non-negative, got {v}"),
            ));
        }
        if !row.iter().sum::<f64>().is_finite() {
            return Err(MoeError::config(
                format!("load[{l}]"),
                "the layer's loads sum past the f64 range",
            ));
        }
    }
    Ok(e)
}

/// Checks one slot table: `num_slots` entries naming experts `< num_experts`, each expert
/// at least once. `what` names the table in errors.
pub(crate) fn validate_table(what: &str, table: &[usize], num_experts: usize, num_slots: usize) -> Result<()> {
    if table.len() != num_slots {
        return Err(MoeError::config(
            what,
            format!("has {} slots, expected num_slots = {num_slots}", table.len()),
        ));
    }
    if let Some((s, &x)) = table.iter().enumerate().find(|(_, x)| **x >= num_experts) {
        return Err(MoeError::config(
            what,
            format!("slot {s} names expert {x}, but there are {num_experts} experts"),
        ));
    }
    if let Some(missing) = counts_of(table, num_experts).iter().position(|&c| c == 0) {
        return Err(MoeError::config(what, format!("expert {missing} has no slot")));
    }
    Ok(())
}

/// One layer's result before it is assembled into [`PlanOutput`].
pub(crate) struct LayerPlan {
    pub slot_to_expert: Vec<usize>,
    /// Replica rank of every slot (its position in `log2phy[expert]`).
    pub replica_rank: Vec<usize>,
}

impl LayerPlan {
    /// Replica ranks by ascending slot, for algorithms without an order of their own.
    pub fn by_slot_order(slot_to_expert: Vec<usize>, num_experts: usize) -> LayerPlan {
        let mut seen = vec![0usize; num_experts];
        let replica_rank = slot_to_expert
            .iter()
            .map(|&e| {
                let r = seen[e];
                seen[e] += 1;
                r
            })
            .collect();
        LayerPlan {
            slot_to_expert,
            replica_rank,
        }
    }
}

/// Plans every layer of `load` (`[L][E]`) onto `num_slots` slots over `num_gpus` GPUs in
/// `num_nodes` nodes (`num_groups` expert groups matter to DeepSeek's hierarchical policy
/// only). `previous` (`[L][num_slots]`) is the placement being replaced: the default
/// algorithm keeps as much of it as it can, and every algorithm reports changes against
/// it (against [`default_assignment`] when absent).
pub fn plan(
    load: &[Vec<f64>],
    num_slots: usize,
    num_gpus: usize,
    num_nodes: usize,
    num_groups: usize,
    algorithm: Algorithm,
    previous: Option<&[Vec<usize>]>,
) -> Result<PlanOutput> {
    plan_observed(
        load,
        num_slots,
        num_gpus,
        num_nodes,
        num_groups,
        algorithm,
        previous,
        &mut |_| {},
    )
}

/// [`plan`], calling `on_layer(l)` after layer `l` is planned (a caller's progress display:
/// the default algorithm takes seconds per layer at tens of thousands of slots).
pub fn plan_observed(
    load: &[Vec<f64>],
    num_slots: usize,
    num_gpus: usize,
    num_nodes: usize,
    num_groups: usize,
    algorithm: Algorithm,
    previous: Option<&[Vec<usize>]>,
    on_layer: &mut dyn FnMut(usize),
) -> Result<PlanOutput> {
    let e = validate_load(load)?;
    validate_geometry(e, num_slots, num_gpus, num_nodes, num_groups)?;
    if let Some(prev) = previous {
        if prev.len() != load.len() {
            return Err(MoeError::config(
                "previous",
                format!("has {} layers, but the load has {}", prev.len(), load.len()),
            ));
        }
        for (l, table) in prev.iter().enumerate() {
            validate_table(&format!("previous[{l}]"), table, e, num_slots)?;
        }
    }
    let geometry = deepseek::Geometry {
        num_slots,
        num_gpus,
        num_nodes,
        num_groups,
    };
    let baseline = default_assignment(e, num_slots, num_gpus);

    let mut layers = Vec::with_capacity(load.len());
    for (l, row) in load.iter().enumerate() {
        let before: &[usize] = previous.map_or(&baseline[..], |p| &p[l][..]);
        let layer = match algorithm {
            Algorithm::DeepSeek => deepseek::rebalance_layer(row, &geometry)?,
            Algorithm::Greedy => {
                let cnt = greedy::do_replication(row, num_slots);
                LayerPlan::by_slot_order(greedy::do_placement(row, &cnt, num_gpus, num_slots / num_gpus), e)
            }
            Algorithm::Default { max_changed_slots } => {
                let slots = default::plan_layer(row, &geometry, previous.map(|p| &p[l][..]), max_changed_slots)?;
                LayerPlan::by_slot_order(slots, e)
            }
        };
        layers.push((layer, before));
        on_layer(l);
    }

    let mut out = PlanOutput {
        phy2log: Vec::new(),
        log2phy: Vec::new(),
        logcnt: Vec::new(),
        balancedness: Vec::new(),
        balancedness_before: Vec::new(),
        changed_slots: Vec::new(),
    };
    let counts: Vec<Vec<usize>> = layers.iter().map(|(p, _)| counts_of(&p.slot_to_expert, e)).collect();
    // DeepSeek pads `log2phy` to the largest replica count over all layers.
    let max_cnt = counts.iter().flatten().copied().max().unwrap_or(1);
    for (((layer, before), cnt), row) in layers.into_iter().zip(counts).zip(load) {
        let mut l2p = vec![vec![-1i64; max_cnt]; e];
        for (s, (&x, &r)) in layer.slot_to_expert.iter().zip(&layer.replica_rank).enumerate() {
            l2p[x][r] = s as i64;
        }
        out.balancedness
            .push(balancedness(row, &layer.slot_to_expert, num_gpus));
        out.balancedness_before.push(balancedness(row, before, num_gpus));
        out.changed_slots
            .push(layer.slot_to_expert.iter().zip(before).filter(|(a, b)| a != b).count());
        out.log2phy.push(l2p);
        out.logcnt.push(cnt);
        out.phy2log.push(layer.slot_to_expert);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancedness_splits_replicas() {
        // Expert 0 (load 4) has two replicas on GPUs 0 and 1: each GPU carries 2 + 2.
        let load = [4.0, 2.0, 2.0];
        assert_eq!(gpu_loads(&load, &[0, 1, 0, 2], 2), vec![4.0, 4.0]);
        assert_eq!(balancedness(&load, &[0, 1, 0, 2], 2), 1.0);
        assert_eq!(balancedness(&load, &[0, 0, 1, 2], 2), 1.0);
        assert_eq!(balancedness(&[0.0, 0.0], &[0, 1], 2), 1.0);
        assert!((balancedness(&[3.0, 1.0], &[0, 1], 2) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn default_assignment_matches_the_partition_rule() {
        assert_eq!(default_assignment(4, 6, 2), vec![0, 1, 2, 2, 3, 0]);
        assert_eq!(default_assignment(4, 4, 2), vec![0, 1, 2, 3]);
    }

    #[test]
    fn bad_inputs_are_typed_errors_naming_the_item() {
        let load = vec![vec![1.0; 4]];
        let err = |l: &[Vec<f64>], s, g, n| plan(l, s, g, n, 1, Algorithm::Greedy, None).unwrap_err().to_string();
        assert!(err(&load, 3, 1, 1).contains("num_slots"), "{}", err(&load, 3, 1, 1));
        assert!(err(&load, 6, 4, 1).contains("do not divide by num_gpus 4"));
        assert!(err(&load, 8, 4, 3).contains("do not divide by num_nodes 3"));
        assert!(err(&[vec![1.0, f64::NAN]], 2, 1, 1).contains("load[0][1]"));
        assert!(err(&[vec![1.0, -1.0]], 2, 1, 1).contains("load[0][1]"));
        assert!(err(&[vec![1.0, 1.0], vec![1.0]], 2, 1, 1).contains("load[1]"));
        assert!(err(&[], 2, 1, 1).contains("no layers"));
        let e = err(&load, 1_000_000_000_000, 8, 1);
        assert!(e.contains("num_slots") && e.contains("limit"), "{e}");
        let prev = vec![vec![0, 1, 1, 2]];
        let e = plan(&load, 4, 2, 1, 1, Algorithm::default(), Some(&prev))
            .unwrap_err()
            .to_string();
        assert!(e.contains("previous[0]") && e.contains("expert 3 has no slot"), "{e}");
        let e = plan(&load, 4, 2, 1, 3, Algorithm::DeepSeek, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_groups"), "{e}");
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in ["deepseek", "greedy", "default"] {
            assert_eq!(a.parse::<Algorithm>().unwrap().name(), a);
        }
        assert!("lpt".parse::<Algorithm>().is_err());
    }
}
