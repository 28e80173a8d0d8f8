//! Tests of `check-boundaries`: the workspace itself is clean (so plain `cargo test -p xtask`
//! enforces the architecture), the layer table is a DAG, the parsers read what the workspace
//! writes, and every rule fires on a planted violation in a copy of the sources.
//!
//! Needles that the rules would find in this very file are assembled with `concat!`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::graph::{ALLOWED, topological_order};
use super::manifest::{self, DepKind};
use super::source::strip_comments;
use super::{Violation, check};

fn workspace_root() -> PathBuf {
    crate::project_root()
}

#[test]
fn check_boundaries() {
    let violations = check(&workspace_root()).expect("workspace readable");
    let listing: Vec<String> = violations.iter().map(Violation::to_string).collect();
    assert!(
        listing.is_empty(),
        "cargo xtask check-boundaries found:\n{}",
        listing.join("\n")
    );
}

#[test]
fn layer_table_is_a_dag_with_core_first() {
    let order = topological_order().expect("the layer table has a cycle");
    assert_eq!(order.first(), Some(&"moe-core"));
    assert_eq!(order.len(), ALLOWED.len());
}

#[test]
fn manifest_subset_reads_every_form() {
    let text = r#"
[package]
name = "demo"

[dependencies]
moe-core.workspace = true
moe-kernels = { workspace = true, features = ["cuda"] }
renamed = { package = "moe-quant", workspace = true }
half = "2" # a comment
cudarc = { version = "0.17", optional = true, features = [
    "driver",
] }

[dependencies.moe-comm]
workspace = true

[dev-dependencies]
moe-testkit = { path = "../moe-testkit" }

[target.'cfg(unix)'.build-dependencies]
cc = "1"

[lints]
workspace = true
"#;
    let m = manifest::parse(text);
    assert_eq!(m.package.as_deref(), Some("demo"));
    assert!(m.lints_workspace);
    let got: Vec<(&str, DepKind, bool, bool)> = m
        .deps
        .iter()
        .map(|d| (d.name.as_str(), d.kind, d.workspace, d.has_path))
        .collect();
    assert_eq!(
        got,
        vec![
            ("moe-core", DepKind::Normal, true, false),
            ("moe-kernels", DepKind::Normal, true, false),
            ("moe-quant", DepKind::Normal, true, false),
            ("half", DepKind::Normal, false, false),
            ("cudarc", DepKind::Normal, false, false),
            ("moe-comm", DepKind::Normal, true, false),
            ("moe-testkit", DepKind::Dev, false, true),
            ("cc", DepKind::Build, false, false),
        ]
    );
}

#[test]
fn scope_prefixes_take_one_segment_wildcards() {
    use super::patterns::matches_prefix;
    assert!(matches_prefix("crates/*/src/", "crates/moe-hf/src/lib.rs"));
    assert!(!matches_prefix("crates/*/src/", "crates/moe-hf/tests/it/main.rs"));
    assert!(matches_prefix("crates/moe/src/factory", "crates/moe/src/factory.rs"));
    assert!(!matches_prefix("crates/moe/src/", "crates/moe-hf/src/lib.rs"));
    assert!(matches_prefix("", "xtask/src/main.rs"));
}

#[test]
fn comments_are_blanked_but_strings_kept() {
    let lines: Vec<String> = [
        "let a = 1; // repeat_idx += 1",
        "let s = \"// not a comment\"; /* block",
        "still block */ let c = '\"'; let l: &'static str = \"x\";",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let code = strip_comments(&lines);
    assert_eq!(code[0].trim_end(), "let a = 1;");
    assert!(code[1].contains("\"// not a comment\""));
    assert!(!code[1].contains("block"));
    assert!(code[2].trim_start().starts_with("let c = '\"';"));
    assert!(code[2].contains("&'static str = \"x\""));
}

// --- planted violations ------------------------------------------------------------------

static COPIES: AtomicUsize = AtomicUsize::new(0);

/// Copies what the rules read (manifests and sources, no `target/` or fixtures) to a fresh
/// temporary directory.
fn copy_workspace() -> PathBuf {
    let src = workspace_root();
    let dst = std::env::temp_dir().join(format!(
        "xtask-boundaries-{}-{}",
        std::process::id(),
        COPIES.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("Cargo.toml"), dst.join("Cargo.toml")).unwrap();
    std::fs::create_dir_all(dst.join("docs")).unwrap();
    std::fs::copy(src.join("docs/ARCHITECTURE.md"), dst.join("docs/ARCHITECTURE.md")).unwrap();
    let mut members: Vec<PathBuf> = std::fs::read_dir(src.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    members.push(src.join("xtask"));
    for member in members {
        let rel = member.strip_prefix(&src).unwrap();
        std::fs::create_dir_all(dst.join(rel)).unwrap();
        std::fs::copy(member.join("Cargo.toml"), dst.join(rel).join("Cargo.toml")).unwrap();
        for sub in ["src", "tests", "benches", "examples"] {
            if member.join(sub).is_dir() {
                copy_tree(&member.join(sub), &dst.join(rel).join(sub));
            }
        }
    }
    dst
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == "fixtures" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A change to one file of the copy, and what `check` must then report.
struct Plant {
    what: &'static str,
    file: &'static str,
    edit: Edit,
    /// `Some(rule)`: the rule must now fire on `file`; `None` for the negative cases below.
    expect: Option<&'static str>,
    /// The rule that must stay silent on `file` (negative cases).
    silent: Option<&'static str>,
}

enum Edit {
    /// Insert a line right after the first line equal to the header.
    InsertAfter(&'static str, String),
    /// Replace the first occurrence of a string.
    Replace(&'static str, String),
    /// Append text at the end.
    Append(String),
    /// Write a whole new file.
    Create(String),
}

fn apply(root: &Path, plant: &Plant) -> Option<String> {
    let path = root.join(plant.file);
    let old = std::fs::read_to_string(&path).ok();
    let new = match &plant.edit {
        Edit::Create(text) => text.clone(),
        Edit::InsertAfter(header, line) => {
            let text = old
                .clone()
                .unwrap_or_else(|| panic!("{} missing in the copy", plant.file));
            let at = text
                .find(header)
                .unwrap_or_else(|| panic!("{header} not in {}", plant.file))
                + header.len();
            format!("{}\n{line}{}", &text[..at], &text[at..])
        }
        Edit::Append(extra) => {
            let text = old
                .clone()
                .unwrap_or_else(|| panic!("{} missing in the copy", plant.file));
            format!("{text}{extra}")
        }
        Edit::Replace(from, to) => {
            let text = old
                .clone()
                .unwrap_or_else(|| panic!("{} missing in the copy", plant.file));
            assert!(text.contains(from), "`{from}` not in {}", plant.file);
            text.replacen(from, to, 1)
        }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, new).unwrap();
    old
}

fn restore(root: &Path, plant: &Plant, old: Option<String>) {
    let path = root.join(plant.file);
    match old {
        Some(text) => std::fs::write(&path, text).unwrap(),
        None => std::fs::remove_file(&path).unwrap(),
    }
}

fn plants() -> Vec<Plant> {
    let doc = "//! planted by xtask's boundary tests\n";
    let ignore_attr = concat!("#[", "ignore]");
    let skip_print = concat!("eprintln!(", "\"skipping: no gpu\");");
    let panic_attr = concat!("#[", "should_panic]");
    let unsafe_block = concat!("unsafe", " { std::hint::unreachable_unchecked() }");
    let cuda_cfg = concat!("#[cfg(feature = ", "\"cuda\")]");
    let cuda_cfg_macro = concat!("cfg!(feature = ", "\"nccl\")");
    vec![
        Plant {
            what: "moe-core depends on moe-hf",
            file: "crates/moe-core/Cargo.toml",
            edit: Edit::InsertAfter("[dependencies]", "moe-hf.workspace = true".into()),
            expect: Some("graph"),
            silent: None,
        },
        Plant {
            what: "moe-eplb tests depend on moe-backends",
            file: "crates/moe-eplb/Cargo.toml",
            edit: Edit::Append("\n[dev-dependencies]\nmoe-backends.workspace = true\n".into()),
            expect: Some("graph-dev"),
            silent: None,
        },
        Plant {
            what: "moe-backends takes moe-testkit as a normal dependency",
            file: "crates/moe-backends/Cargo.toml",
            edit: Edit::InsertAfter("[dependencies]", "moe-testkit.workspace = true".into()),
            expect: Some("testkit-dev-only"),
            silent: None,
        },
        Plant {
            what: "moe-eplb declares rayon and no file of it names rayon",
            file: "crates/moe-eplb/Cargo.toml",
            edit: Edit::InsertAfter("[dependencies]", "rayon.workspace = true".into()),
            expect: Some("unused-dep"),
            silent: None,
        },
        Plant {
            what: "moe-scheduler declares moe-eplb again (an edge no file of it uses)",
            file: "crates/moe-scheduler/Cargo.toml",
            edit: Edit::InsertAfter("[dependencies]", "moe-eplb.workspace = true".into()),
            expect: Some("unused-dep"),
            silent: None,
        },
        Plant {
            what: "moe-kernels takes mpi",
            file: "crates/moe-kernels/Cargo.toml",
            edit: Edit::InsertAfter("[dependencies]", "mpi = \"0.8\"".into()),
            expect: Some("external-owner"),
            silent: None,
        },
        Plant {
            what: "moe-eplb names moe-core by path",
            file: "crates/moe-eplb/Cargo.toml",
            edit: Edit::Replace(
                "moe-core.workspace = true",
                "moe-core = { path = \"../moe-core\" }".into(),
            ),
            expect: Some("workspace-dep"),
            silent: None,
        },
        Plant {
            what: "a crate missing from the layer table",
            file: "crates/moe-stray/Cargo.toml",
            edit: Edit::Create(
                "[package]\nname = \"moe-stray\"\n\n[lints]\nworkspace = true\n".into(),
            ),
            expect: Some("graph"),
            silent: None,
        },
        Plant {
            what: "a scheduler advances repeat_idx",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f(layer: &mut L) {{ layer.repeat_idx += 1; }}\n"
            )),
            expect: Some("repeat-idx"),
            silent: None,
        },
        Plant {
            what: "a scheduler loads weights",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f(b: &mut B, s: &S) {{ b.load_weights(s, false).ok(); }}\n"
            )),
            expect: Some("scheduler-no-lifecycle"),
            silent: None,
        },
        Plant {
            what: "a scheduler destroys the strategy",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!("{doc}fn f(c: &mut C) {{ c.destroy().ok(); }}\n")),
            expect: Some("scheduler-no-comm-lifetime"),
            silent: None,
        },
        Plant {
            what: "a scheduler builds its own strategy",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f(g: G) {{ let c = moe_comm::AllGatherReduceScatter::new(g, t); }}\n"
            )),
            expect: Some("scheduler-no-comm-lifetime"),
            silent: None,
        },
        Plant {
            what: "a scheduler calls a CPU kernel directly",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!("{doc}use moe_kernels::cpu::linear;\n")),
            expect: Some("compute-entry"),
            silent: None,
        },
        Plant {
            what: "the scheduler computes an expert itself",
            file: "crates/moe-scheduler/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f(x: &T, w: &T) {{ let _ = ops::linear(x, w, None); }}\n"
            )),
            expect: Some("compute-entry"),
            silent: None,
        },
        Plant {
            what: "a model crate builds a scheduler",
            file: "crates/moe-hf/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f() {{ let _ = moe_scheduler::create_moe_scheduler(kind); }}\n"
            )),
            expect: Some("construct-in-assembler"),
            silent: None,
        },
        Plant {
            what: "the CLI builds a backend from the registry",
            file: "crates/moe-cli/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f() {{ let b = (moe::REGISTRY[0].build)(&c, p); }}\n"
            )),
            expect: Some("construct-in-assembler"),
            silent: None,
        },
        Plant {
            what: "a backend reads the chunk limit",
            file: "crates/moe-backends/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f(c: &C) -> Option<usize> {{ c.moe_max_num_tokens }}\n"
            )),
            expect: Some("backend-no-policy"),
            silent: None,
        },
        Plant {
            what: "an external-comm backend holds a process group",
            file: "crates/moe-backends/src/planted.rs",
            edit: Edit::Create(format!("{doc}struct B {{ g: Arc<dyn ProcessGroup> }}\n")),
            expect: Some("backend-no-policy"),
            silent: None,
        },
        Plant {
            what: "a fused-comm backend may hold its process group",
            file: "crates/moe-backends/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}struct B {{ g: Arc<dyn ProcessGroup> }}\nfn k() -> SchedulerKind {{ SchedulerKind::FusedComm }}\n"
            )),
            expect: None,
            silent: Some("backend-no-policy"),
        },
        Plant {
            what: "the assembler branches on a backend name",
            file: "crates/moe/src/planted.rs",
            edit: Edit::Create(format!("{doc}fn f(n: &str) -> bool {{ n == \"cpu\" }}\n")),
            expect: Some("assembler-no-concrete-backend"),
            silent: None,
        },
        Plant {
            what: "a registry the rule cannot read its backends from",
            file: "crates/moe/src/registry.rs",
            edit: Edit::Create(format!("{doc}pub static REGISTRY: &[BackendEntry] = &[];\n")),
            expect: Some("assembler-no-concrete-backend"),
            silent: None,
        },
        Plant {
            what: "the factory may name backends",
            file: "crates/moe/src/factory_planted.rs",
            edit: Edit::Create(format!("{doc}fn f(n: &str) -> bool {{ n == \"cpu\" }}\n")),
            expect: None,
            silent: Some("assembler-no-concrete-backend"),
        },
        Plant {
            what: "an ignored test",
            file: "crates/moe-core/tests/planted.rs",
            edit: Edit::Create(format!("{doc}#[test]\n{ignore_attr}\nfn t() {{}}\n")),
            expect: Some("no-adhoc-skip"),
            silent: None,
        },
        Plant {
            what: "a test that prints a skip and returns",
            file: "crates/moe-comm/tests/planted.rs",
            edit: Edit::Create(format!("{doc}#[test]\nfn t() {{ {skip_print} }}\n")),
            expect: Some("no-adhoc-skip"),
            silent: None,
        },
        Plant {
            what: "moe-testkit may report skips",
            file: "crates/moe-testkit/src/planted.rs",
            edit: Edit::Create(format!("{doc}fn f() {{ {skip_print} }}\n")),
            expect: None,
            silent: Some("no-adhoc-skip"),
        },
        Plant {
            what: "a test expecting a panic",
            file: "crates/moe-core/tests/planted.rs",
            edit: Edit::Create(format!("{doc}#[test]\n{panic_attr}\nfn t() {{}}\n")),
            expect: Some("no-should-panic"),
            silent: None,
        },
        Plant {
            what: "the architecture doc names a test that does not exist",
            file: "docs/ARCHITECTURE.md",
            edit: Edit::Append(
                "\n**Architecture Invariant:** planted.\nEnforced by: test `moe::it planted::no_such_test_anywhere`.\n".into(),
            ),
            expect: Some("architecture-doc"),
            silent: None,
        },
        Plant {
            what: "the architecture doc names a rule that does not exist",
            file: "docs/ARCHITECTURE.md",
            edit: Edit::Append(
                "\n**Architecture Invariant:** planted.\nEnforced by: `cargo xtask check-boundaries` rule `no-such-rule`.\n".into(),
            ),
            expect: Some("architecture-doc"),
            silent: None,
        },
        Plant {
            what: "an invariant that only exists as prose",
            file: "docs/ARCHITECTURE.md",
            edit: Edit::Append("\n**Architecture Invariant:** planted, enforced by nothing.\n\n## Next\n".into()),
            expect: Some("architecture-doc"),
            silent: None,
        },
        Plant {
            what: "the cuda feature switches a function",
            file: "crates/moe-backends/src/planted.rs",
            edit: Edit::Create(format!("{doc}{cuda_cfg}\nfn f() {{}}\n")),
            expect: Some("gpu-cfg"),
            silent: None,
        },
        Plant {
            what: "the nccl feature tested in an expression",
            file: "crates/moe-comm/src/planted.rs",
            edit: Edit::Create(format!("{doc}fn f() -> bool {{ {cuda_cfg_macro} }}\n")),
            expect: Some("gpu-cfg"),
            silent: None,
        },
        Plant {
            what: "the cuda feature chooses a module",
            file: "crates/moe-kernels/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}{cuda_cfg}\n#[path = \"x.rs\"]\nmod x;\n{cuda_cfg}\npub(crate) use x::*;\n"
            )),
            expect: None,
            silent: Some("gpu-cfg"),
        },
        Plant {
            what: "unsafe in the CUDA module outside ffi.rs",
            file: "crates/moe-kernels/src/cuda/enabled/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f() {{\n    // SAFETY: never reached.\n    {unsafe_block}\n}}\n"
            )),
            expect: Some("cuda-unsafe-in-ffi"),
            silent: None,
        },
        Plant {
            what: "unsafe in the CUDA module's ffi.rs",
            file: "crates/moe-kernels/src/cuda/enabled/ffi.rs",
            edit: Edit::Append(format!(
                "\nfn planted() {{\n    // SAFETY: never reached.\n    {unsafe_block}\n}}\n"
            )),
            expect: None,
            silent: Some("cuda-unsafe-in-ffi"),
        },
        Plant {
            what: "unsafe in the NCCL group outside its ffi.rs",
            file: "crates/moe-comm/src/nccl_group/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f() {{\n    // SAFETY: never reached.\n    {unsafe_block}\n}}\n"
            )),
            expect: Some("nccl-unsafe-in-ffi"),
            silent: None,
        },
        Plant {
            what: "unsafe in the NCCL group's ffi.rs",
            file: "crates/moe-comm/src/nccl_group/ffi.rs",
            edit: Edit::Append(format!(
                "\nfn planted() {{\n    // SAFETY: never reached.\n    {unsafe_block}\n}}\n"
            )),
            expect: None,
            silent: Some("nccl-unsafe-in-ffi"),
        },
        Plant {
            what: "a file without a //! header",
            file: "crates/moe-quant/src/planted.rs",
            edit: Edit::Create("fn f() {}\n".into()),
            expect: Some("doc-comment"),
            silent: None,
        },
        Plant {
            what: "unsafe without SAFETY",
            file: "crates/moe-kernels/src/planted.rs",
            edit: Edit::Create(format!("{doc}fn f() {{\n    {unsafe_block}\n}}\n")),
            expect: Some("safety-comment"),
            silent: None,
        },
        Plant {
            what: "unsafe with SAFETY two lines above",
            file: "crates/moe-kernels/src/planted.rs",
            edit: Edit::Create(format!(
                "{doc}fn f() {{\n    // SAFETY: never reached.\n    let _ = 0;\n    {unsafe_block}\n}}\n"
            )),
            expect: None,
            silent: Some("safety-comment"),
        },
    ]
}

#[test]
fn planted_violations_are_caught() {
    let root = copy_workspace();
    let baseline = check(&root).expect("copy readable");
    let mut failures = Vec::new();
    for plant in plants() {
        let old = apply(&root, &plant);
        let found: Vec<Violation> = check(&root)
            .expect("copy readable")
            .into_iter()
            .filter(|v| !baseline.contains(v))
            .collect();
        restore(&root, &plant, old);
        let hit = |rule: &str| found.iter().any(|v| v.file == plant.file && v.rule == rule);
        if let Some(rule) = plant.expect {
            if !hit(rule) {
                failures.push(format!(
                    "{}: expected `{}: rule {rule}`, got {found:?}",
                    plant.what, plant.file
                ));
            }
            let printed = found
                .iter()
                .find(|v| v.rule == rule)
                .map(Violation::to_string)
                .unwrap_or_default();
            if !printed.starts_with(&format!("{}: rule {rule}: ", plant.file)) {
                failures.push(format!("{}: printed as `{printed}`", plant.what));
            }
        }
        if let Some(rule) = plant.silent.filter(|r| hit(r)) {
            failures.push(format!(
                "{}: rule {rule} fired on {}: {found:?}",
                plant.what, plant.file
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
