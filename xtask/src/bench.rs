//! `cargo xtask bench`: the full benchmark table, ours next to candle's, written to
//! `docs/BENCHMARKS.md`.
//!
//! 1. builds `moe` (moe-cli) and `candle-peer` (with its `candle` feature) in release, in two
//!    builds so that `moe` is the same binary a plain `cargo build --release` makes;
//! 2. `moe bench --prepare` generates the cached weights and inputs and prints the plan (one
//!    line per preset: name, cache directory, `tokens:repeats,...`);
//! 3. `candle-peer` runs the same rows on the same cache files, as JSON lines;
//! 4. `moe bench --peer FILE --markdown docs/BENCHMARKS.md` measures the ceilings and our rows
//!    and writes the page.
//!
//! Flags: `--no-peer` skips candle; anything else (`--preset`, `--tokens`, `--repeats`, ...)
//! goes to `moe bench` as is. A run narrowed by flags prints its table but leaves the page
//! alone, so the committed page always holds the full default table. Timings are only as good
//! as the machine is quiet: `moe bench` warns about concurrent `rustc` processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The page this command regenerates.
const PAGE: &str = "docs/BENCHMARKS.md";

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`, failing with `what` when it does not succeed.
fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub fn run(root: &Path, args: &[String]) -> Result<bool> {
    let no_peer = args.iter().any(|a| a == "--no-peer");
    let pass: Vec<&String> = args.iter().filter(|a| *a != "--no-peer").collect();
    let write_page = pass.is_empty() && !no_peer;

    // Two builds, not one: built together, the two packages' dependency features would be
    // unified, giving `moe` a different build (and a rebuild) from the one `cargo build` makes.
    check(
        cargo().current_dir(root).args(["build", "--release", "-p", "moe-cli"]),
        "cargo build --release -p moe-cli",
    )?;
    if !no_peer {
        check(
            cargo()
                .current_dir(root)
                .args(["build", "--release", "-p", "candle-peer", "--features", "candle"]),
            "cargo build --release -p candle-peer --features candle",
        )?;
    }
    let bin = target_dir(root).join("release");
    let moe = bin.join("moe");

    let mut peer_file = None;
    if !no_peer {
        let out = Command::new(&moe)
            .current_dir(root)
            .args(["bench", "--prepare"])
            .args(&pass)
            .stderr(Stdio::inherit())
            .output()
            .context("starting `moe bench --prepare`")?;
        if !out.status.success() {
            bail!("`moe bench --prepare` failed ({})", out.status);
        }
        let plan = String::from_utf8(out.stdout).context("`moe bench --prepare` printed non-UTF-8")?;
        let mut lines = String::new();
        for line in plan.lines().filter(|l| !l.trim().is_empty()) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [preset, dir, rows] = parts[..] else {
                bail!("unexpected plan line `{line}`")
            };
            eprintln!("candle-peer: {preset} rows {rows}");
            let out = Command::new(bin.join("candle-peer"))
                .current_dir(root)
                .args(["--cache", dir, "--rows", rows])
                .stderr(Stdio::inherit())
                .output()
                .context("starting candle-peer")?;
            if !out.status.success() {
                bail!("candle-peer failed on {preset} ({})", out.status);
            }
            lines.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        let path = target_dir(root).join("bench").join("candle.jsonl");
        std::fs::create_dir_all(path.parent().unwrap_or(root))?;
        std::fs::write(&path, lines).with_context(|| format!("writing {}", path.display()))?;
        peer_file = Some(path);
    }

    let mut ours = Command::new(&moe);
    ours.current_dir(root).arg("bench").args(&pass);
    if let Some(p) = &peer_file {
        ours.arg("--peer").arg(p);
    }
    if write_page {
        ours.args(["--markdown", PAGE]);
    }
    check(&mut ours, "`moe bench`")?;
    if write_page {
        println!("wrote {PAGE}");
    } else {
        println!("(narrowed run: {PAGE} left unchanged)");
    }
    Ok(true)
}
