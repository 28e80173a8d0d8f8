//! The layer DAG and the owners of external crates, held as data, and the manifest rules
//! that check every `Cargo.toml` against them.
//!
//! A new dependency edge is a change of architecture: it is made by editing these tables and
//! `docs/ARCHITECTURE.md` in the same change, never by editing a manifest alone.

use super::Violation;
use super::manifest::{DepKind, Manifest};

/// Which workspace crates a crate's `[dependencies]` may name.
#[derive(Clone, Copy, Debug)]
pub enum Allowed {
    Only(&'static [&'static str]),
    /// `moe-testkit` exercises every layer; it is itself only ever a dev-dependency.
    Any,
}

const CORE: &str = "moe-core";
const KERNELS: &str = "moe-kernels";
const QUANT: &str = "moe-quant";
const COMM: &str = "moe-comm";
const EPLB: &str = "moe-eplb";
const BACKENDS: &str = "moe-backends";
const SCHEDULER: &str = "moe-scheduler";
const MOE: &str = "moe";
const HF: &str = "moe-hf";
/// The crate that may only ever be a dev-dependency (xtask excepted: tooling, never shipped).
pub const TESTKIT: &str = "moe-testkit";
const CLI: &str = "moe-cli";
const XTASK: &str = "xtask";
const FUZZ: &str = "moe-fuzz";
const BENCH: &str = "moe-bench";

/// The one-way graph of `ARCHITECTURE-BRIEF.md`, per crate, for normal dependencies.
pub const ALLOWED: &[(&str, Allowed)] = &[
    (CORE, Allowed::Only(&[])),
    (KERNELS, Allowed::Only(&[CORE])),
    (QUANT, Allowed::Only(&[CORE, KERNELS])),
    (COMM, Allowed::Only(&[CORE, KERNELS])),
    (EPLB, Allowed::Only(&[CORE])),
    (BACKENDS, Allowed::Only(&[CORE, KERNELS, QUANT])),
    (SCHEDULER, Allowed::Only(&[CORE, KERNELS, COMM, EPLB])),
    (
        MOE,
        Allowed::Only(&[CORE, KERNELS, QUANT, COMM, EPLB, BACKENDS, SCHEDULER]),
    ),
    // No kernels: `moe` re-exports the host ops a model needs, so model code stays above the
    // assembler and cannot bypass it.
    (HF, Allowed::Only(&[CORE, QUANT, MOE])),
    (TESTKIT, Allowed::Any),
    // The benchmark harness behind `moe bench`: it builds the layer through `moe`, reads its
    // weight cache back through moe-hf's checkpoint loader and quantizes the cached DeepSeek-V3
    // weights with moe-quant's real FP8-block quantizer rather than a copy of it. Only the CLI
    // depends on it; no library crate does.
    (BENCH, Allowed::Only(&[CORE, QUANT, MOE, HF])),
    (CLI, Allowed::Only(&[MOE, HF, EPLB, CORE, BENCH])),
    // The candle peer of `cargo xtask bench` (benches/candle-peer, not a default member): it
    // reads the bench cache files itself and shares no code with the runtime.
    ("candle-peer", Allowed::Only(&[])),
    (XTASK, Allowed::Only(&[TESTKIT])),
    // The stable-Rust fuzzer (`cargo xtask fuzz`): it calls the parsers of the crates whose
    // inputs it mutates (and takes the workspace's PRNG from moe-core), and nothing depends on it.
    (FUZZ, Allowed::Only(&[CORE, HF, EPLB])),
    // The Python package (PyO3 extension module, built by maturin): it calls the layer and
    // the checkpoint loader as a Rust caller would, and nothing depends on it.
    ("moe-py", Allowed::Only(&[CORE, MOE, HF, EPLB])),
];

/// Workspace crates a crate's `[dev-dependencies]` may name beyond its normal set and
/// `moe-testkit`. Empty today: tests of a layer use that layer and the shared testkit.
pub const DEV_EXTRA: &[(&str, &[&str])] = &[];

/// External crates with owners: (crate, the workspace crates that may depend on it, why).
/// Every dependency kind counts, so a test cannot smuggle in a GPU or MPI crate either.
pub const EXTERNAL_OWNERS: &[(&str, &[&str], &str)] = &[
    (
        "cudarc",
        &[KERNELS, COMM],
        "CUDA driver/NVRTC/cuBLAS live in moe-kernels, NCCL in moe-comm",
    ),
    ("mpi", &[COMM], "MPI is one ProcessGroup implementation of moe-comm"),
    (
        "safetensors",
        // moe-cli writes `--output` tensors, moe-bench writes its weight cache and moe-testkit
        // reads the fixtures' io files; they only move whole tensors and leave checkpoint
        // semantics to moe-hf/moe-quant.
        &[HF, QUANT, CLI, BENCH, TESTKIT],
        "checkpoint formats belong to the loaders (moe-hf, moe-quant)",
    ),
    ("clap", &[CLI, XTASK], "argument parsing belongs to binaries"),
    ("indicatif", &[CLI, XTASK], "progress bars belong to binaries"),
    (
        "anyhow",
        &[CLI, XTASK],
        "libraries return typed MoeError; anyhow is for binaries",
    ),
];

fn allowed_of(krate: &str) -> Option<Allowed> {
    ALLOWED.iter().find(|(k, _)| *k == krate).map(|(_, a)| *a)
}

fn permits(allowed: Allowed, dep: &str) -> bool {
    match allowed {
        Allowed::Any => true,
        Allowed::Only(list) => list.contains(&dep),
    }
}

/// Checks one member manifest. `file` is its path relative to the root; `workspace_crates`
/// are the package names of all members.
pub fn check_manifest(file: &str, m: &Manifest, workspace_crates: &[String], out: &mut Vec<Violation>) {
    let Some(krate) = m.package.as_deref() else {
        out.push(Violation::new(file, "graph", "no [package] name".into()));
        return;
    };
    let Some(allowed) = allowed_of(krate) else {
        out.push(Violation::new(
            file,
            "graph",
            format!("crate `{krate}` is not in the layer table (xtask/src/boundaries/graph.rs ALLOWED); add it there and to docs/ARCHITECTURE.md"),
        ));
        return;
    };
    if !m.lints_workspace {
        out.push(Violation::new(
            file,
            "workspace-lints",
            "missing `[lints] workspace = true`".into(),
        ));
    }
    for dep in &m.deps {
        let internal = workspace_crates.contains(&dep.name);
        if internal {
            check_internal(file, krate, allowed, dep, out);
        } else {
            check_external(file, krate, dep, out);
        }
    }
}

fn check_internal(file: &str, krate: &str, allowed: Allowed, dep: &super::manifest::Dep, out: &mut Vec<Violation>) {
    let at = format!("line {}: {} `{}`", dep.line, dep.kind.table(), dep.name);
    if !dep.workspace || dep.has_path {
        out.push(Violation::new(
            file,
            "workspace-dep",
            format!(
                "{at}: internal dependencies are written `{}.workspace = true`",
                dep.name
            ),
        ));
    }
    if dep.name == TESTKIT && dep.kind != DepKind::Dev && krate != XTASK {
        out.push(Violation::new(
            file,
            "testkit-dev-only",
            format!("{at}: moe-testkit is only ever a dev-dependency"),
        ));
        return;
    }
    match dep.kind {
        DepKind::Normal | DepKind::Build => {
            if !permits(allowed, &dep.name) {
                out.push(Violation::new(
                    file,
                    "graph",
                    format!(
                        "{at}: `{krate}` may not depend on `{}` (allowed: {})",
                        dep.name,
                        describe(allowed)
                    ),
                ));
            }
        }
        DepKind::Dev => {
            let extra = DEV_EXTRA.iter().find(|(k, _)| *k == krate).map_or(&[][..], |(_, e)| *e);
            if !(permits(allowed, &dep.name) || dep.name == TESTKIT || extra.contains(&dep.name.as_str())) {
                out.push(Violation::new(
                    file,
                    "graph-dev",
                    format!(
                        "{at}: `{krate}` tests may not depend on `{}` (allowed: {}, moe-testkit)",
                        dep.name,
                        describe(allowed)
                    ),
                ));
            }
        }
    }
}

fn check_external(file: &str, krate: &str, dep: &super::manifest::Dep, out: &mut Vec<Violation>) {
    let owned_elsewhere = EXTERNAL_OWNERS
        .iter()
        .find(|(n, owners, _)| *n == dep.name && !owners.contains(&krate));
    if let Some((name, owners, why)) = owned_elsewhere {
        out.push(Violation::new(
            file,
            "external-owner",
            format!(
                "line {}: {} `{name}` is owned by {} ({why})",
                dep.line,
                dep.kind.table(),
                owners.join(", ")
            ),
        ));
    }
}

fn depends_on(a: Allowed, krate: &str) -> bool {
    match a {
        Allowed::Any => true,
        Allowed::Only(list) => list.contains(&krate),
    }
}

fn describe(allowed: Allowed) -> String {
    match allowed {
        Allowed::Any => "any".into(),
        Allowed::Only([]) => "no workspace crate".into(),
        Allowed::Only(list) => list.join(", "),
    }
}

/// Crates of the table in an order where every crate comes after all it may depend on, or
/// the crate at which a cycle was found.
pub fn topological_order() -> Result<Vec<&'static str>, &'static str> {
    let mut order: Vec<&'static str> = Vec::new();
    let mut remaining: Vec<(&'static str, Allowed)> = ALLOWED.to_vec();
    while !remaining.is_empty() {
        let before = remaining.len();
        remaining.retain(|(k, a)| {
            let ready = match a {
                // `Any` means "any crate that does not itself depend on this one".
                Allowed::Any => ALLOWED
                    .iter()
                    .all(|(o, a2)| o == k || order.contains(o) || depends_on(*a2, k)),
                Allowed::Only(list) => list.iter().all(|d| order.contains(d)),
            };
            if ready {
                order.push(k);
            }
            !ready
        });
        if remaining.len() == before {
            return Err(remaining[0].0);
        }
    }
    Ok(order)
}
