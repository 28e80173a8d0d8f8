//! `cargo xtask test`, `test-matrix` and `codegen`: the commands that run cargo.
//!
//! `test` also compile-checks the GPU build (`cuda_check`): every `cuda`/`nccl` feature of the
//! workspace turned on, tests included, through clippy with warnings denied (clippy reads the
//! workspace's `rust-version`, so an API newer than it fails here too). cudarc loads the
//! driver at run time, so this needs no GPU and no CUDA toolkit; the GPU run itself goes
//! through `cargo xtask gpu-bundle`.
//!
//! `test` runs its legs in order and all of them even after a failure (one run shows every
//! broken leg), then fails if any leg failed. The matrix and the capability table come from
//! moe-testkit's `moe-matrix` binary, built with the test profile so it reuses the artifacts
//! the test leg just built.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// `cargo`, as the one that runs xtask (so a toolchain override applies to the legs too).
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn status_ok(cmd: &mut Command) -> Result<bool> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    Ok(status.success())
}

/// `cargo run` of the testkit binary with `args`.
fn moe_matrix(root: &Path, args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args([
            "run",
            "--quiet",
            "--profile",
            "test",
            "-p",
            "moe-testkit",
            "--bin",
            "moe-matrix",
            "--",
        ])
        .args(args);
    cmd
}

/// `cargo xtask test-matrix [--json] [--filter S]`.
pub fn test_matrix(root: &Path, json: bool, filter: Option<&str>) -> Result<bool> {
    let mut args = Vec::new();
    if json {
        args.push("--json");
    }
    if let Some(f) = filter {
        args.extend(["--filter", f]);
    }
    status_ok(&mut moe_matrix(root, &args))
}

/// `cargo xtask codegen [--check]`: the capability table of the developer guide.
pub fn codegen(root: &Path, check: bool) -> Result<bool> {
    let mode = if check { "--check" } else { "--write" };
    status_ok(&mut moe_matrix(root, &["--capability-table", mode]))
}

/// Whether cargo has the subcommand `sub` installed (`cargo <sub> --version` succeeds).
fn cargo_has(root: &Path, sub: &str) -> bool {
    cargo()
        .current_dir(root)
        .args([sub, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The unit and integration tests of every crate.
fn workspace_tests(root: &Path) -> Result<bool> {
    if cargo_has(root, "nextest") {
        status_ok(
            cargo()
                .current_dir(root)
                .args(["nextest", "run", "--workspace", "--no-fail-fast"]),
        )
    } else {
        println!("xtask test: cargo-nextest is not installed; falling back to `cargo test --workspace`");
        status_ok(
            cargo()
                .current_dir(root)
                .args(["test", "--workspace", "--no-fail-fast"]),
        )
    }
}

/// Features of the workspace members that build GPU code; [`cuda_check`] turns them all on.
pub const GPU_FEATURES: &[&str] = &["cuda", "nccl"];

/// `member/feature` for every feature of [`GPU_FEATURES`] a workspace member declares (read
/// from `cargo metadata`, so a crate that gains one is checked without editing this list).
pub fn gpu_features(root: &Path) -> Result<Vec<String>> {
    let out = cargo()
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo metadata")?;
    if !out.status.success() {
        anyhow::bail!("cargo metadata failed ({})", out.status);
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")?;
    let mut features = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let Some(name) = pkg["name"].as_str() else { continue };
        for f in GPU_FEATURES {
            if pkg["features"].get(f).is_some() {
                features.push(format!("{name}/{f}"));
            }
        }
    }
    Ok(features)
}

/// `cargo clippy --workspace --tests --examples -D warnings` with every GPU feature on (plain
/// `cargo check` where clippy is not installed): the CUDA build, tests included, must compile
/// on a machine without a GPU, lint-clean and within the workspace's `rust-version`.
pub fn cuda_check(root: &Path) -> Result<bool> {
    let features = gpu_features(root)?;
    if features.is_empty() {
        println!("xtask test: no workspace crate declares a {GPU_FEATURES:?} feature; nothing to check");
        return Ok(true);
    }
    let features = features.join(",");
    let targets = ["--workspace", "--tests", "--examples", "--features", &features];
    if cargo_has(root, "clippy") {
        status_ok(
            cargo()
                .current_dir(root)
                .arg("clippy")
                .args(targets)
                .args(["--", "-D", "warnings"]),
        )
    } else {
        println!("xtask test: clippy is not installed; falling back to `cargo check`");
        status_ok(cargo().current_dir(root).arg("check").args(targets))
    }
}

/// One step of `cargo xtask test`.
struct Leg {
    name: &'static str,
    run: fn(&Path) -> Result<bool>,
}

/// The legs in the order they run: cheapest feedback on correctness first, the architecture
/// check last so a boundary slip never hides a test failure.
const LEGS: &[Leg] = &[
    Leg {
        name: "workspace tests (nextest)",
        run: workspace_tests,
    },
    Leg {
        name: "CUDA build compiles, lint-clean (cargo clippy, every cuda/nccl feature)",
        run: cuda_check,
    },
    Leg {
        name: "test-matrix",
        run: |root| test_matrix(root, false, None),
    },
    Leg {
        name: "Python package (pip install ./crates/moe-py, pytest)",
        run: crate::python::python_leg,
    },
    Leg {
        name: "multi-process (mpirun -n 2 and -n 4)",
        run: crate::mpi::mpi_leg,
    },
    Leg {
        name: "check-boundaries",
        run: crate::check_boundaries,
    },
];

/// `cargo xtask test`.
pub fn test(root: &Path) -> Result<bool> {
    let mut results = Vec::new();
    for leg in LEGS {
        println!("\n=== xtask test: {} ===", leg.name);
        let ok = (leg.run)(root).unwrap_or_else(|e| {
            eprintln!("xtask test: {} could not run: {e:#}", leg.name);
            false
        });
        results.push((leg.name, ok));
    }
    println!("\n=== xtask test: summary ===");
    for (name, ok) in &results {
        println!("{} {name}", if *ok { "ok  " } else { "FAIL" });
    }
    // The plain closing line CI tools read: legs, not tests (each leg printed its own counts).
    let passed = results.iter().filter(|(_, ok)| *ok).count();
    println!("xtask: {passed} passed, {} failed", results.len() - passed);
    Ok(passed == results.len())
}
