//! `moe eplb plan` and `moe eplb stats`: expert placements from recorded expert loads.
//!
//! `plan` reads `{"load": [[...per expert...] per layer]}` (the file `moe run --record-stats`
//! writes), runs a placement algorithm and writes `{"phy2log", "logcnt", ...}` plus the
//! balancedness per layer; `--yaml` writes TensorRT-LLM's placement YAML instead. `stats`
//! summarizes a recorded load file: per-layer imbalance of experts and, for a geometry, of
//! ranks under the default slot table.

use std::path::Path;

use anyhow::Context;
use moe_core::limits;
use moe_eplb::{Algorithm, PlanInput, PlanOutput, balancedness, default_assignment, placement_yaml, plan_observed};
use serde_json::json;

use crate::{Summary, progress};

/// Parameters of `moe eplb plan`.
pub struct PlanRun<'a> {
    pub load: &'a Path,
    pub num_slots: usize,
    pub num_gpus: usize,
    pub num_nodes: usize,
    pub num_groups: usize,
    pub algorithm: Algorithm,
    pub previous: Option<&'a Path>,
    pub output: &'a Path,
    /// Write TensorRT-LLM's YAML (`num_slots`, `initial_global_assignments`) instead of JSON.
    pub yaml: bool,
    /// Model layer index of the load file's first row (YAML layer keys).
    pub first_layer: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = crate::input_files::read_bounded(path, what, limits::MAX_LOAD_FILE_BYTES)?;
    serde_json::from_str(&text).with_context(|| format!("parsing {what} `{}`", path.display()))
}

pub fn plan_cmd(r: &PlanRun<'_>) -> anyhow::Result<Summary> {
    let input: PlanInput = read_json(r.load, "load file")?;
    let previous: Option<PlanOutput> = r.previous.map(|p| read_json(p, "previous placement")).transpose()?;
    // The YAML names layers first_layer.. : the last one must exist too, checked before planning.
    let last_layer = r
        .first_layer
        .checked_add(input.load.len())
        .filter(|&end| end <= limits::MAX_LAYERS)
        .with_context(|| {
            format!(
                "--first-layer {} plus the load file's {} layer(s) passes the layer limit of {} (docs/LIMITS.md)",
                r.first_layer,
                input.load.len(),
                limits::MAX_LAYERS
            )
        })?;
    let out = progress::while_running("planning", input.load.len(), |done| {
        plan_observed(
            &input.load,
            r.num_slots,
            r.num_gpus,
            r.num_nodes,
            r.num_groups,
            r.algorithm,
            previous.as_ref().map(|p| p.phy2log.as_slice()),
            &mut |l| done(l + 1),
        )
    })
    .with_context(|| format!("planning from `{}`", r.load.display()))?;
    let body = if r.yaml {
        let layers: Vec<usize> = (r.first_layer..last_layer).collect();
        placement_yaml(&out, &layers, 0)?
    } else {
        serde_json::to_string_pretty(&out)?
    };
    crate::output::write_atomic(r.output, "placement", body.as_bytes())?;
    let mut text = format!(
        "eplb plan: {} layer(s), {} slots on {} GPU(s) in {} node(s), algorithm {}\n",
        input.load.len(),
        r.num_slots,
        r.num_gpus,
        r.num_nodes,
        r.algorithm.name()
    );
    for (l, ((after, before), changed)) in out
        .balancedness
        .iter()
        .zip(&out.balancedness_before)
        .zip(&out.changed_slots)
        .enumerate()
    {
        text.push_str(&format!(
            "layer {l}: balancedness (mean/max GPU load) {before:.4} -> {after:.4}, {changed} slot(s) changed\n"
        ));
    }
    text.push_str(&format!("wrote {}\n", r.output.display()));
    let json = json!({
        "layers": input.load.len(),
        "algorithm": r.algorithm.name(),
        "balancedness_before": out.balancedness_before,
        "balancedness": out.balancedness,
        "changed_slots": out.changed_slots,
        "output": r.output.display().to_string(),
    });
    Ok(Summary { text, json })
}

/// `moe eplb stats FILE [--num-slots R --num-gpus P]`.
pub fn stats_cmd(path: &Path, geometry: Option<(usize, usize)>) -> anyhow::Result<Summary> {
    let input: PlanInput = read_json(path, "load file")?;
    // The same checks as `plan`: negative, non-finite or ragged loads are refused, not summed.
    moe_eplb::validate_load(&input.load).with_context(|| format!("load file `{}`", path.display()))?;
    let mut text = format!("eplb stats: {} ({} layer(s))\n", path.display(), input.load.len());
    let mut layers = Vec::new();
    for (l, load) in input.load.iter().enumerate() {
        let total: f64 = load.iter().sum();
        let mean = total / load.len().max(1) as f64;
        let max = load.iter().copied().fold(0.0, f64::max);
        let hottest = load
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let ranks = match geometry {
            Some((slots, gpus)) => {
                moe_eplb::validate_geometry(load.len(), slots, gpus, 1, 1)?;
                Some(balancedness(load, &default_assignment(load.len(), slots, gpus), gpus))
            }
            None => None,
        };
        text.push_str(&format!(
            "layer {l}: {total:.0} routed, expert max/mean {:.2} (hottest expert {hottest}){}\n",
            if mean > 0.0 { max / mean } else { 0.0 },
            ranks.map_or(String::new(), |b| format!(
                ", rank balancedness {b:.4} under the default placement"
            )),
        ));
        layers.push(json!({ "layer": l, "routed": total, "expert_max_over_mean": if mean > 0.0 { max / mean } else { 0.0 }, "hottest_expert": hottest, "rank_balancedness": ranks }));
    }
    Ok(Summary {
        text,
        json: json!({ "file": path.display().to_string(), "layers": layers }),
    })
}

/// Writes the per-expert loads of a run as a one-layer load file for `moe eplb plan`.
pub fn record_stats(path: &Path, per_expert: &[usize]) -> anyhow::Result<()> {
    let input = PlanInput {
        load: vec![per_expert.iter().map(|&c| c as f64).collect()],
    };
    crate::output::write_atomic(path, "statistics", serde_json::to_string(&input)?.as_bytes())
}
