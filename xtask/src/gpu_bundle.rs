//! `cargo xtask gpu-bundle`: everything a GPU run needs, built here (no Rust on the GPU
//! machine) into one folder, `target/gpu-bundle/`, that travels there whole.
//!
//! 1. builds in release with the `cuda` features: the `moe` CLI and moe-testkit's
//!    `moe-matrix` (one `cargo build`), then the test binaries of moe-kernels, moe-backends
//!    and moe-hf (`cargo test --no-run --message-format=json`, whose `executable` fields name
//!    them), both with the same features so the shared crates build once;
//! 2. lays out the bundle: `bin/` (the two binaries), `bin/tests/<crate>-<target>` (the test
//!    binaries), `kernels/` (every CUDA kernel module compiled ahead of time for sm_89 and
//!    sm_90/sm_90a, with its manifest: `kernels.rs`; found by the binaries beside `bin/`, so
//!    a fresh machine starts without NVRTC compiling; `--no-kernels` leaves it out),
//!    `fixtures/` (a copy of `crates/moe-testkit/fixtures`, found by the tests
//!    through `MOE_FIXTURES_DIR`), `gpu-env.sh` (`tools/gpu/gpu-env.sh`), `torch_baseline.py`
//!    and `run.sh` (`benches/gpu/`), and `BUILD.txt` (commit, date, contents);
//! 3. checks the size: the bundle must stay well under the 64 MiB a GPU run carries.
//!
//! Debug info is left out (`CARGO_PROFILE_RELEASE_DEBUG=false`): line tables alone would make
//! the test binaries several times larger, and a panic still names its functions.
//! On the GPU machine: `bash target/gpu-bundle/run.sh [tests|matrix|bench|baseline|all]...`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Where the bundle is laid out, under the target directory.
const BUNDLE_DIR: &str = "gpu-bundle";
/// The bundle must stay under this (a GPU run carries 64 MiB in all, the checkout included).
const MAX_BUNDLE_BYTES: u64 = 48 << 20;
/// Binaries of the bundle: (package, binary, feature enabling CUDA).
const BINARIES: &[(&str, &str, &str)] = &[
    ("moe-cli", "moe", "moe-cli/cuda"),
    ("moe-testkit", "moe-matrix", "moe-testkit/cuda"),
];
/// Crates whose test binaries the bundle carries, with the feature enabling CUDA.
const TEST_CRATES: &[(&str, &str)] = &[
    ("moe-kernels", "moe-kernels/cuda"),
    ("moe-backends", "moe-backends/cuda"),
    ("moe-hf", "moe-hf/cuda"),
];
/// Files copied from the checkout: (source, name in the bundle).
const FILES: &[(&str, &str)] = &[
    ("tools/gpu/gpu-env.sh", "gpu-env.sh"),
    ("benches/gpu/run.sh", "run.sh"),
    ("benches/gpu/torch_baseline.py", "torch_baseline.py"),
];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// `cargo <args> --release --features <features> --message-format=json` with debug info off;
/// returns the compiler artifacts' JSON objects. Cargo takes features only of the packages a
/// command selects, so each build names its own; both lists turn on the same `cuda` features
/// of the crates the two builds share (moe, moe-hf, moe-backends, moe-kernels), which
/// therefore compile once.
fn build(root: &Path, args: &[&str], features: &str) -> Result<Vec<serde_json::Value>> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(args)
        .args([
            "--release",
            "--features",
            features,
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let shown = format!("cargo {}", args.join(" "));
    eprintln!("gpu-bundle: {shown} --release --features {features}");
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut artifacts = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v["reason"] == "compiler-artifact" => artifacts.push(v),
            Ok(_) => {}
            // Not JSON: a build script's or cargo's own line; show it.
            Err(_) => eprintln!("{line}"),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(artifacts)
}

/// The package directory name of an artifact (`crates/moe-hf/Cargo.toml` -> `moe-hf`).
fn package_of(artifact: &serde_json::Value) -> Option<String> {
    let manifest = Path::new(artifact["manifest_path"].as_str()?);
    Some(manifest.parent()?.file_name()?.to_string_lossy().into_owned())
}

fn copy_file(from: &Path, to: &Path) -> Result<u64> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Copies the tree at `from` into `to`; returns the bytes copied.
fn copy_tree(from: &Path, to: &Path) -> Result<u64> {
    let mut bytes = 0;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            bytes += copy_tree(&entry.path(), &dest)?;
        } else {
            bytes += copy_file(&entry.path(), &dest)?;
        }
    }
    Ok(bytes)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(path)?.permissions();
    perm.set_mode(perm.mode() | 0o755);
    std::fs::set_permissions(path, perm)?;
    Ok(())
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

/// The checkout's commit and whether it has local changes (for `BUILD.txt`).
fn revision(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} with local changes")
    } else {
        head
    }
}

/// Bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        bytes += if entry.file_type()?.is_dir() {
            tree_bytes(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(bytes)
}

/// `cargo xtask gpu-bundle [--no-kernels]`.
pub fn run(root: &Path, kernels: bool) -> Result<bool> {
    for (src, _) in FILES {
        if !root.join(src).is_file() {
            bail!("{src} is missing from the checkout");
        }
    }
    // 1. Build.
    let mut bin_args = vec!["build"];
    for (pkg, bin, _) in BINARIES {
        bin_args.extend(["-p", pkg, "--bin", bin]);
    }
    let bin_features: Vec<&str> = BINARIES.iter().map(|b| b.2).collect();
    let bins = build(root, &bin_args, &bin_features.join(","))?;
    let mut test_args = vec!["test", "--no-run"];
    for (pkg, _) in TEST_CRATES {
        test_args.extend(["-p", pkg]);
    }
    let test_features: Vec<&str> = TEST_CRATES.iter().map(|t| t.1).collect();
    let tests = build(root, &test_args, &test_features.join(","))?;

    // 2. Lay out.
    let bundle = target_dir(root).join(BUNDLE_DIR);
    if bundle.exists() {
        std::fs::remove_dir_all(&bundle).with_context(|| format!("clearing {}", bundle.display()))?;
    }
    std::fs::create_dir_all(bundle.join("bin/tests"))?;
    let mut listing: BTreeMap<String, u64> = BTreeMap::new();
    for (pkg, bin, _) in BINARIES {
        let exe = bins
            .iter()
            .filter(|a| package_of(a).as_deref() == Some(*pkg) && a["target"]["name"] == *bin)
            .find_map(|a| a["executable"].as_str())
            .with_context(|| format!("cargo reported no executable for {pkg} --bin {bin}"))?;
        let dest = bundle.join("bin").join(bin);
        listing.insert(format!("bin/{bin}"), copy_file(Path::new(exe), &dest)?);
        make_executable(&dest)?;
    }
    for (pkg, _) in TEST_CRATES {
        let mut found = false;
        for a in tests
            .iter()
            .filter(|a| package_of(a).as_deref() == Some(*pkg) && a["profile"]["test"] == true)
        {
            let (Some(exe), Some(target)) = (a["executable"].as_str(), a["target"]["name"].as_str()) else {
                continue;
            };
            let kind = a["target"]["kind"][0].as_str().unwrap_or("test");
            // `moe-hf-lib` (unit tests), `moe-hf-it` (integration binary).
            let name = if kind == "lib" {
                format!("{pkg}-lib")
            } else {
                format!("{pkg}-{target}")
            };
            let dest = bundle.join("bin/tests").join(&name);
            listing.insert(format!("bin/tests/{name}"), copy_file(Path::new(exe), &dest)?);
            make_executable(&dest)?;
            found = true;
        }
        if !found {
            bail!("cargo reported no test binary of {pkg}");
        }
    }
    if kernels {
        let dir = bundle.join("kernels");
        crate::kernels::build(root, &dir, crate::kernels::DEFAULT_ARCH, None)?;
        listing.insert("kernels/".into(), tree_bytes(&dir)?);
    }
    let fixtures = copy_tree(&root.join("crates/moe-testkit/fixtures"), &bundle.join("fixtures"))?;
    listing.insert("fixtures/".into(), fixtures);
    for (src, name) in FILES {
        let dest = bundle.join(name);
        listing.insert((*name).into(), copy_file(&root.join(src), &dest)?);
        if name.ends_with(".sh") || name.ends_with(".py") {
            make_executable(&dest)?;
        }
    }
    let total: u64 = listing.values().sum();
    let mut build_txt = format!(
        "moe GPU bundle, built by `cargo xtask gpu-bundle` from {} (release, features {} and {}, no debug info)\n\n",
        revision(root),
        bin_features.join(","),
        test_features.join(",")
    );
    for (name, bytes) in &listing {
        build_txt.push_str(&format!("{:>10.2} MiB  {name}\n", *bytes as f64 / (1 << 20) as f64));
    }
    build_txt.push_str(&format!("{:>10.2} MiB  total\n", total as f64 / (1 << 20) as f64));
    std::fs::write(bundle.join("BUILD.txt"), &build_txt)?;

    // 3. Report and check the size.
    print!("{build_txt}");
    println!("bundle: {}", bundle.display());
    println!(
        "on the GPU machine: bash {}/run.sh [tests|matrix|bench|baseline|all]...",
        bundle_rel(root, &bundle)
    );
    if total > MAX_BUNDLE_BYTES {
        bail!(
            "the bundle is {:.1} MiB, over the {} MiB budget (a GPU run carries 64 MiB in all)",
            total as f64 / (1 << 20) as f64,
            MAX_BUNDLE_BYTES >> 20
        );
    }
    Ok(true)
}

/// `bundle` relative to the checkout when it lies inside it (the path a GPU run's `carry` takes).
fn bundle_rel(root: &Path, bundle: &Path) -> String {
    bundle
        .strip_prefix(root)
        .map_or_else(|_| bundle.display().to_string(), |p| p.display().to_string())
}
