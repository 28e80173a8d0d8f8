//! Placement files: TensorRT-LLM's YAML into per-layer configs (and the errors that name
//! what is wrong), the planner's JSON in and out, and a plan written back as YAML.

use moe_eplb::{Algorithm, PlanInput, PlanOutput, load_placement_yaml, placement_yaml, plan};

#[test]
fn trtllm_yaml_round_trips_through_a_plan() {
    let input: PlanInput = serde_json::from_str(r#"{"load": [[90, 10, 10, 10], [5, 5, 5, 85]]}"#).unwrap();
    let out = plan(&input.load, 6, 2, 1, 1, Algorithm::default(), None).unwrap();
    let text = placement_yaml(&out, &[3, 5], 0).unwrap();
    let file = load_placement_yaml(&text).unwrap();
    assert_eq!(file.num_slots, 6);
    assert_eq!(file.num_experts, Some(4));
    assert_eq!(
        file.layer(3).unwrap().initial_global_assignments.as_deref(),
        Some(&out.phy2log[0][..])
    );
    assert_eq!(
        file.layer(5).unwrap().initial_global_assignments.as_deref(),
        Some(&out.phy2log[1][..])
    );
    assert!(placement_yaml(&out, &[3], 0).is_err());
}

#[test]
fn block_style_lists_and_quoted_keys_parse() {
    let text = "# generated\nnum_slots: 4\nlayer_updates_per_iter: 10\ninitial_global_assignments:\n  '0':\n    - 1\n    - 0\n    - 1\n    - 2\n";
    let f = load_placement_yaml(text).unwrap();
    let c = f.layer(0).unwrap();
    assert_eq!((c.num_slots, c.layer_updates_per_iter), (4, 10));
    assert_eq!(c.initial_global_assignments, Some(vec![1, 0, 1, 2]));
}

#[test]
fn yaml_errors_name_the_item() {
    let cases = [
        ("num_slots: [1", "not valid YAML"),
        ("- 1\n- 2", "must be a mapping"),
        ("layer_updates_per_iter: 1", "num_slots`: is missing"),
        ("num_slots: -4", "num_slots`: must be a non-negative integer, got -4"),
        ("num_slots: 4\nnum_experts: 4", "unknown key the string \"num_experts\""),
        (
            "num_slots: 4\ninitial_global_assignments: [0, 1, 2, 3]",
            "must map layer index to a slot list",
        ),
        (
            "num_slots: 4\ninitial_global_assignments:\n  x: [0, 1, 2, 3]",
            "key the string \"x\" is not a layer index",
        ),
        (
            "num_slots: 4\ninitial_global_assignments:\n  2: [0, 1, 2]",
            "initial_global_assignments[2]`: has 3 entries, expected num_slots = 4",
        ),
        (
            "num_slots: 4\ninitial_global_assignments:\n  2: [0, 1, 3, 3]",
            "expert 2 has no slot",
        ),
        (
            "num_slots: 4\ninitial_global_assignments:\n  2: [0, 1, 1.5, 2]",
            "initial_global_assignments[2][2]`: must be a non-negative integer, got the number 1.5",
        ),
        (
            "num_slots: 4\ninitial_global_assignments:\n  1: [0, 1, 2, 3]\n  2: [0, 1, 2, 2]",
            "covers 3 experts, but an earlier layer covers 4",
        ),
    ];
    for (text, needle) in cases {
        let e = load_placement_yaml(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn a_plan_json_is_the_previous_placement_of_the_next_plan() {
    let load = vec![vec![40.0, 30.0, 20.0, 10.0, 5.0, 5.0, 5.0, 5.0]];
    let first = plan(&load, 12, 4, 1, 1, Algorithm::default(), None).unwrap();
    let json = serde_json::to_string(&first).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "phy2log",
        "logcnt",
        "log2phy",
        "balancedness",
        "balancedness_before",
        "changed_slots",
    ] {
        assert!(value.get(key).is_some(), "{key} missing from {json}");
    }
    // `--previous` needs only phy2log.
    let previous: PlanOutput = serde_json::from_str(&format!(r#"{{"phy2log": {:?}}}"#, first.phy2log)).unwrap();
    let again = plan(&load, 12, 4, 1, 1, Algorithm::default(), Some(&previous.phy2log)).unwrap();
    assert_eq!(again.changed_slots, vec![0], "the same load keeps the same placement");
    assert_eq!(again.balancedness_before, first.balancedness);
    let err = plan(&load, 12, 4, 1, 1, Algorithm::default(), Some(&[vec![0; 12]]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("previous[0]") && err.contains("expert 1 has no slot"),
        "{err}"
    );
}

#[test]
fn algorithms_deserialize_from_the_cli_spelling() {
    let a: Algorithm = serde_json::from_str(r#"{"kind": "default", "max_changed_slots": 16}"#).unwrap();
    assert_eq!(
        a,
        Algorithm::Default {
            max_changed_slots: Some(16)
        }
    );
    let d: Algorithm = serde_json::from_str(r#"{"kind": "deepseek"}"#).unwrap();
    assert_eq!(d, Algorithm::DeepSeek);
}
