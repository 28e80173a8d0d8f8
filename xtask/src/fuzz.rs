//! `cargo xtask fuzz [--target NAME|all] [--seconds S] [--seed N] [--max-input-ms M]`: the
//! long fuzz run (`crates/moe-fuzz`), built in release and run from the workspace root; every
//! flag goes through to the `moe-fuzz` binary. The short run is moe-fuzz's integration tests,
//! part of `cargo xtask test`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Runs `moe-fuzz` with `args` (default `--target all --seconds 60`); `Ok(false)` when it
/// reports a finding.
pub fn run(root: &Path, args: &[String]) -> Result<bool> {
    let mut args = args.to_vec();
    if !args.iter().any(|a| a == "--target") {
        args.extend(["--target".into(), "all".into()]);
    }
    if !args.iter().any(|a| a == "--seconds") {
        args.extend(["--seconds".into(), "60".into()]);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "moe-fuzz",
            "--bin",
            "moe-fuzz",
            "--",
        ])
        .args(&args)
        .status()
        .context("running cargo run -p moe-fuzz")?;
    Ok(status.success())
}
