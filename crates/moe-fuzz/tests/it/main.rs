//! The short fuzz run of `cargo xtask test`: every target on its committed corpus and a few
//! seconds of mutations, with no panic and no input past the time bound. The long run is
//! `cargo xtask fuzz --target NAME --seconds 600` (docs/LIMITS.md).

use std::path::PathBuf;
use std::time::Duration;

use moe_fuzz::{Options, TARGETS, Target, run};

fn options(seconds: f64) -> Options {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Options {
        seconds,
        seed: 18,
        // Generous for a debug-ish test build on a loaded CI machine; the long release run
        // uses a tighter bound.
        max_input: Duration::from_secs(4),
        corpus_dir: root.join("corpus"),
        crash_dir: std::env::temp_dir().join(format!("moe-fuzz-findings-{}", std::process::id())),
    }
}

fn short_run(name: &str) {
    let target = Target::by_name(name).expect("target exists");
    let report = run(target, &options(3.0)).expect("corpus readable");
    println!("{report}");
    assert!(report.findings.is_empty(), "{report}: {:?}", report.findings);
    assert!(report.iterations > 20, "{report}");
    assert!(report.outcomes > 1, "mutations reach more than one outcome: {report}");
}

#[test]
fn every_target_has_a_committed_corpus() {
    for t in TARGETS {
        let seeds = moe_fuzz::runner::seeds(&options(0.0).corpus_dir, t.name).unwrap();
        assert!(!seeds.is_empty(), "corpus/{} is empty", t.name);
        assert!(seeds.iter().all(|s| s.len() <= t.max_len), "{}", t.name);
    }
}

#[test]
fn fuzz_config() {
    short_run("config");
}

#[test]
fn fuzz_safetensors() {
    short_run("safetensors");
}

#[test]
fn fuzz_placement() {
    short_run("placement");
}

#[test]
fn fuzz_load() {
    short_run("load");
}

#[test]
fn fuzz_planner() {
    short_run("planner");
}
