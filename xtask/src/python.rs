//! The Python leg of `cargo xtask test` (issue 17): installs `crates/moe-py` (the `moe_rs`
//! extension, built by maturin through pip) into the `python3` on PATH (or `$PYTHON`), so the
//! suite always tests the current source, then runs its pytest suite. The fixture tests compare
//! with the `moe` binary of the test profile, which the workspace leg built before this one.
//!
//! Its test dependencies are prerequisites, as Open MPI is for the mpirun leg (`.ci/run`
//! installs them); without them the leg fails naming what is missing rather than skipping.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// The packages the suite imports or builds with (each package's module has its name).
const DEPENDENCIES: [&str; 6] = ["maturin", "numpy", "pytest", "torch", "transformers", "safetensors"];

fn python() -> Command {
    Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()))
}

fn ok(cmd: &mut Command) -> Result<bool> {
    let shown = format!("{cmd:?}");
    Ok(cmd.status().with_context(|| format!("starting {shown}"))?.success())
}

/// The leg: dependencies present, package installed, pytest green.
pub fn python_leg(root: &Path) -> Result<bool> {
    let missing: Vec<&str> = DEPENDENCIES
        .into_iter()
        .filter(|module| {
            !python()
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask test: the Python leg needs {} (python3 -m pip install {}); .ci/run installs them",
            missing.join(", "),
            missing.join(" ")
        );
        return Ok(false);
    }
    let quiet = ["--quiet", "--disable-pip-version-check"];
    if !ok(python()
        .current_dir(root)
        .args(["-m", "pip", "install"])
        .args(quiet)
        .arg("./crates/moe-py"))?
    {
        return Ok(false);
    }
    // pytest's temporary directories and torch's kernel cache under target/, not /tmp: a run
    // leaves nothing behind outside the build directory.
    let target = root.join("target");
    ok(python()
        .current_dir(root)
        .env("TORCHINDUCTOR_CACHE_DIR", target.join("torchinductor"))
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "crates/moe-py/tests",
            "--basetemp",
        ])
        .arg(target.join("pytest")))
}
