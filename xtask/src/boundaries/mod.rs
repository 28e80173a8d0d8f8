//! `cargo xtask check-boundaries`: the architecture of `docs/ARCHITECTURE.md` as checks.
//!
//! Three families of rules, all data-driven:
//! - manifest rules ([`graph`]): the workspace dependency DAG per crate (normal and dev
//!   separately), external-crate owners, `workspace = true` for internal paths, workspace lints;
//! - pattern rules ([`patterns`]): invariants 3-6, 9 and 10 as absences over source lines;
//! - tidy rules ([`tidy`]): `//!` headers and `// SAFETY:` comments;
//! - the GPU-feature rule ([`features`]): `cfg(feature = "cuda"/"nccl")` only on `mod`/`use`.
//!
//! Every failure is one [`Violation`] printed as `<file>: rule <id>: <message>`.

pub mod backends;
pub mod docs;
pub mod features;
pub mod graph;
pub mod manifest;
pub mod patterns;
pub mod source;
pub mod tidy;
pub mod unused;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Path relative to the checked root, `/`-separated.
    pub file: String,
    pub rule: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(file: &str, rule: &'static str, message: String) -> Violation {
        Violation {
            file: file.to_string(),
            rule,
            message,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: rule {}: {}", self.file, self.rule, self.message)
    }
}

/// A rule id with what it keeps absent (for `--list` and the docs).
pub struct RuleInfo {
    pub id: &'static str,
    pub what: &'static str,
}

/// Every rule id, manifest and tidy rules included.
pub fn rules() -> Vec<RuleInfo> {
    let mut v = vec![
        RuleInfo {
            id: "graph",
            what: "a crate's [dependencies] name only the workspace crates its row of graph::ALLOWED lists (invariant 1)",
        },
        RuleInfo {
            id: "graph-dev",
            what: "a crate's [dev-dependencies] name only its normal set, moe-testkit and graph::DEV_EXTRA",
        },
        RuleInfo {
            id: "testkit-dev-only",
            what: "moe-testkit is only ever a dev-dependency (xtask excepted)",
        },
        RuleInfo {
            id: "external-owner",
            what: "cudarc, mpi, safetensors, clap, indicatif, anyhow appear only in their owners' manifests (invariant 2)",
        },
        RuleInfo {
            id: "workspace-dep",
            what: "internal dependencies are written `name.workspace = true`, never with a path of their own",
        },
        RuleInfo {
            id: "workspace-lints",
            what: "every member inherits `[lints] workspace = true`",
        },
    ];
    for r in patterns::RULES {
        if !v.iter().any(|i| i.id == r.id) {
            v.push(RuleInfo { id: r.id, what: r.what });
        }
    }
    v.push(RuleInfo {
        id: backends::RULE,
        what: backends::WHAT,
    });
    v.push(RuleInfo {
        id: features::RULE,
        what: features::WHAT,
    });
    v.push(RuleInfo {
        id: unused::RULE,
        what: unused::WHAT,
    });
    v.push(RuleInfo {
        id: "architecture-doc",
        what: "every Architecture Invariant of docs/ARCHITECTURE.md ends with `Enforced by:` naming existing rules and tests",
    });
    v.push(RuleInfo {
        id: "doc-comment",
        what: "every .rs file starts with a `//!` comment",
    });
    v.push(RuleInfo {
        id: "safety-comment",
        what: "every `unsafe {` / `unsafe impl` has a `// SAFETY:` comment within the 3 lines above",
    });
    v
}

/// Runs every rule over the workspace at `root`. `Err` only when the tree cannot be read.
pub fn check(root: &Path) -> Result<Vec<Violation>> {
    let mut out = Vec::new();
    let root_text = std::fs::read_to_string(root.join("Cargo.toml"))
        .with_context(|| format!("reading {}", root.join("Cargo.toml").display()))?;
    let root_manifest = manifest::parse(&root_text);
    let dirs = manifest::member_dirs(root, &root_manifest).context("listing workspace members")?;
    let mut members = Vec::new();
    for dir in &dirs {
        let path = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        members.push((source::relative(root, &path), manifest::parse(&text)));
    }
    if let Err(krate) = graph::topological_order() {
        out.push(Violation::new(
            "xtask/src/boundaries/graph.rs",
            "graph",
            format!("the layer table ALLOWED has a cycle through `{krate}`"),
        ));
    }
    let names: Vec<String> = members.iter().filter_map(|(_, m)| m.package.clone()).collect();
    for (rel, m) in &members {
        graph::check_manifest(rel, m, &names, &mut out);
    }
    let files = source::collect(root).with_context(|| format!("reading sources under {}", root.display()))?;
    for (rel, m) in &members {
        unused::check(rel, m, &files, &mut out);
    }
    backends::check(&files, &mut out);
    for file in &files {
        patterns::check(file, &mut out);
        features::check(file, &mut out);
        tidy::check(file, &mut out);
    }
    let doc = std::fs::read_to_string(root.join(docs::ARCHITECTURE_DOC)).ok();
    let ids: Vec<&str> = rules().iter().map(|r| r.id).collect();
    docs::check(doc.as_deref(), &ids, &files, &mut out);
    out.sort();
    out.dedup();
    Ok(out)
}
