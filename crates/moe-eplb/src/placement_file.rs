//! TensorRT-LLM's static placement file (spec §C.2), read from YAML text into per-layer
//! [`EplbConfig`] values, and written back from a [`PlanOutput`]:
//!
//! ```yaml
//! num_slots: 288
//! layer_updates_per_iter: 0
//! initial_global_assignments:
//!   3: [138, 81, 60, ...]   # layer -> expert of every global slot
//! ```
//!
//! Rules as TensorRT-LLM's: unknown keys are refused (its config is a keyword-argument
//! constructor), every list has `num_slots` entries and covers every expert (`set(list) ==
//! range(E)`, with the same `E` in every layer), and asking for a layer the assignments do
//! not name is an error. Callers read the file; this module only parses text.

use std::collections::BTreeMap;

use moe_core::{EplbConfig, MoeError, Result, limits};
use yaml_rust2::Yaml;

use crate::plan::{PlanOutput, counts_of};

/// A parsed placement file.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementFile {
    pub num_slots: usize,
    pub layer_updates_per_iter: usize,
    /// Per-layer configs of the layers the file assigns (empty without assignments).
    pub layers: BTreeMap<usize, EplbConfig>,
    /// Experts every assignment covers (`None` without assignments).
    pub num_experts: Option<usize>,
}

impl PlacementFile {
    /// The config of `layer_idx`: its own table when the file has assignments (missing layer
    /// = error, as TensorRT-LLM), else the default wrap (`initial_global_assignments: None`).
    pub fn layer(&self, layer_idx: usize) -> Result<EplbConfig> {
        if self.layers.is_empty() {
            return Ok(EplbConfig {
                num_slots: self.num_slots,
                layer_updates_per_iter: self.layer_updates_per_iter,
                initial_global_assignments: None,
            });
        }
        self.layers.get(&layer_idx).cloned().ok_or_else(|| {
            MoeError::config(
                "eplb placement file: initial_global_assignments",
                format!(
                    "has no entry for layer {layer_idx} (layers present: {:?})",
                    self.layers.keys().collect::<Vec<_>>()
                ),
            )
        })
    }
}

const FIELD: &str = "eplb placement file";

fn field(path: &str) -> String {
    format!("{FIELD}: {path}")
}

fn as_usize(y: &Yaml, path: &str) -> Result<usize> {
    match y {
        Yaml::Integer(i) => usize::try_from(*i)
            .map_err(|_| MoeError::config(field(path), format!("must be a non-negative integer, got {i}"))),
        other => Err(MoeError::config(
            field(path),
            format!("must be a non-negative integer, got {}", describe(other)),
        )),
    }
}

fn describe(y: &Yaml) -> String {
    match y {
        Yaml::Real(s) => format!("the number {s}"),
        Yaml::Integer(i) => format!("the integer {i}"),
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Boolean(b) => format!("the boolean {b}"),
        Yaml::Array(_) => "a list".into(),
        Yaml::Hash(_) => "a mapping".into(),
        Yaml::Alias(_) => "an alias".into(),
        Yaml::Null => "null".into(),
        Yaml::BadValue => "an invalid value".into(),
    }
}

/// Parses a TensorRT-LLM placement file.
pub fn load_placement_yaml(text: &str) -> Result<PlacementFile> {
    // Size and nesting are bounded there, before and while parsing.
    let docs = crate::yaml_tree::load(text, FIELD)?;
    let [doc] = docs.as_slice() else {
        return Err(MoeError::config(
            FIELD,
            format!("must hold one YAML document, found {}", docs.len()),
        ));
    };
    let Yaml::Hash(top) = doc else {
        return Err(MoeError::config(
            FIELD,
            format!("must be a mapping, got {}", describe(doc)),
        ));
    };
    let mut num_slots = None;
    let mut layer_updates_per_iter = 0;
    let mut assignments = None;
    for (k, v) in top {
        match k.as_str() {
            Some("num_slots") => num_slots = Some(as_usize(v, "num_slots")?),
            Some("layer_updates_per_iter") => layer_updates_per_iter = as_usize(v, "layer_updates_per_iter")?,
            Some("initial_global_assignments") => assignments = Some(v),
            _ => {
                return Err(MoeError::config(
                    FIELD,
                    format!(
                        "unknown key {} (expected num_slots, layer_updates_per_iter, initial_global_assignments)",
                        describe(k)
                    ),
                ));
            }
        }
    }
    let num_slots = num_slots.ok_or_else(|| MoeError::config(field("num_slots"), "is missing"))?;
    if num_slots == 0 {
        return Err(MoeError::config(field("num_slots"), "must be at least 1"));
    }
    limits::check_max(&field("num_slots"), num_slots, limits::MAX_SLOTS)?;
    let mut file = PlacementFile {
        num_slots,
        layer_updates_per_iter,
        layers: BTreeMap::new(),
        num_experts: None,
    };
    let table = match assignments {
        None | Some(Yaml::Null) => return Ok(file),
        Some(Yaml::Hash(h)) => h,
        Some(other) => {
            return Err(MoeError::config(
                field("initial_global_assignments"),
                format!("must map layer index to a slot list, got {}", describe(other)),
            ));
        }
    };
    for (k, v) in table {
        // TensorRT-LLM writes integer keys; quoted ones ("3") are accepted too.
        let layer = match k {
            Yaml::String(s) => s.trim().parse::<usize>().ok(),
            other => as_usize(other, "initial_global_assignments").ok(),
        }
        .ok_or_else(|| {
            MoeError::config(
                field("initial_global_assignments"),
                format!("key {} is not a layer index", describe(k)),
            )
        })?;
        limits::check_max(&field("initial_global_assignments"), layer, limits::MAX_LAYERS)?;
        let path = format!("initial_global_assignments[{layer}]");
        let Yaml::Array(items) = v else {
            return Err(MoeError::config(
                field(&path),
                format!("must be a list of expert ids, got {}", describe(v)),
            ));
        };
        let list = items
            .iter()
            .enumerate()
            .map(|(s, y)| as_usize(y, &format!("{path}[{s}]")))
            .collect::<Result<Vec<usize>>>()?;
        if list.len() != num_slots {
            return Err(MoeError::config(
                field(&path),
                format!("has {} entries, expected num_slots = {num_slots}", list.len()),
            ));
        }
        // An id at or past num_slots leaves some expert below it without a slot; refusing it
        // here also keeps the count below sized by the slots, not by the id.
        if let Some((s, x)) = list.iter().enumerate().find(|(_, x)| **x >= num_slots) {
            return Err(MoeError::config(
                field(&format!("{path}[{s}]")),
                format!("expert {x} is not below num_slots = {num_slots}, so experts 0..{x} cannot all have a slot"),
            ));
        }
        // set(list) == range(E): E is one past the largest id, and no id below it is absent.
        let e = list.iter().max().map_or(0, |m| m + 1);
        if let Some(missing) = counts_of(&list, e).iter().position(|&c| c == 0) {
            return Err(MoeError::config(
                field(&path),
                format!("expert {missing} has no slot (experts 0..{e} must all appear)"),
            ));
        }
        match file.num_experts {
            Some(prev) if prev != e => {
                return Err(MoeError::config(
                    field(&path),
                    format!("covers {e} experts, but an earlier layer covers {prev}"),
                ));
            }
            _ => file.num_experts = Some(e),
        }
        if file.layers.contains_key(&layer) {
            return Err(MoeError::config(field(&path), "appears twice"));
        }
        file.layers.insert(
            layer,
            EplbConfig {
                num_slots,
                layer_updates_per_iter,
                initial_global_assignments: Some(list),
            },
        );
    }
    Ok(file)
}

/// Writes `plan` as a TensorRT-LLM placement file; plan layer `i` becomes model layer
/// `layer_indices[i]` (the planner numbers only MoE layers).
pub fn placement_yaml(plan: &PlanOutput, layer_indices: &[usize], layer_updates_per_iter: usize) -> Result<String> {
    if layer_indices.len() != plan.phy2log.len() {
        return Err(MoeError::config(
            "layer indices",
            format!(
                "{} given for a plan of {} layers",
                layer_indices.len(),
                plan.phy2log.len()
            ),
        ));
    }
    let num_slots = plan.phy2log.first().map_or(0, Vec::len);
    let mut out = format!(
        "num_slots: {num_slots}\nlayer_updates_per_iter: {layer_updates_per_iter}\ninitial_global_assignments:\n"
    );
    for (idx, row) in layer_indices.iter().zip(&plan.phy2log) {
        let items: Vec<String> = row.iter().map(usize::to_string).collect();
        out.push_str(&format!("  {idx}: [{}]\n", items.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trtllm_file_becomes_per_layer_configs() {
        let f = load_placement_yaml("num_slots: 6\nlayer_updates_per_iter: 0\ninitial_global_assignments:\n  3: [0, 1, 2, 2, 3, 0]\n  '5': [3, 2, 1, 0, 0, 1]\n").unwrap();
        assert_eq!(f.num_experts, Some(4));
        assert_eq!(
            f.layer(3).unwrap().initial_global_assignments,
            Some(vec![0, 1, 2, 2, 3, 0])
        );
        assert_eq!(f.layer(5).unwrap().num_slots, 6);
        assert!(f.layer(4).unwrap_err().to_string().contains("no entry for layer 4"));
    }

    #[test]
    fn huge_slot_counts_and_expert_ids_are_refused_naming_the_entry() {
        let e = load_placement_yaml(
            "num_slots: 1000000000000
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_slots") && e.contains("limit"), "{e}");
        let e = load_placement_yaml(
            "num_slots: 4
initial_global_assignments:
  0: [0, 1, 2, 1000000000000]
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("initial_global_assignments[0][3]"), "{e}");
        let e = load_placement_yaml(
            "num_slots: 2
initial_global_assignments:
  99999999999: [0, 1]
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("initial_global_assignments") && e.contains("limit"), "{e}");
    }

    #[test]
    fn without_assignments_every_layer_gets_the_default_wrap() {
        let f = load_placement_yaml("num_slots: 8\nlayer_updates_per_iter: 2\n").unwrap();
        let c = f.layer(17).unwrap();
        assert_eq!(
            (c.num_slots, c.layer_updates_per_iter, c.initial_global_assignments),
            (8, 2, None)
        );
    }
}
