//! The `unused-dep` rule: every dependency a member declares is named by its code. A declared
//! edge that no file uses still orders builds, still counts as an allowed layer edge, and hides
//! what a crate really needs; removing it is the fix.
//!
//! A dependency counts as used where a comment-free line of the crate names its identifier
//! (`-` as `_`) as a path (`ident::`) or in `use ident` / `extern crate ident`: `[dependencies]`
//! in the crate's `src/` (or `build.rs` for `[build-dependencies]`), `[dev-dependencies]` also
//! in `tests/`, `benches/` and `examples/`.

use super::Violation;
use super::manifest::{DepKind, Manifest};
use super::source::{SourceFile, word_positions};

pub const RULE: &str = "unused-dep";
pub const WHAT: &str = "every dependency a member's Cargo.toml declares is named (`ident::` or `use ident`) by its code: src/ for [dependencies], also tests/, benches/, examples/ for [dev-dependencies]";

/// Whether `line` names crate `ident` as a path or in a `use` / `extern crate`.
fn names(line: &str, ident: &str) -> bool {
    word_positions(line, ident).into_iter().any(|p| {
        let after = &line[p + ident.len()..];
        let before = line[..p].trim_end();
        after.starts_with("::") || before.ends_with("use") || before.ends_with("extern crate")
    })
}

/// Checks the dependencies of the member whose manifest is `manifest_rel` (relative to the
/// workspace root) against `files`, every source file of the workspace.
pub fn check(manifest_rel: &str, m: &Manifest, files: &[SourceFile], out: &mut Vec<Violation>) {
    let Some(dir) = manifest_rel.strip_suffix("Cargo.toml") else {
        return;
    };
    if dir.is_empty() {
        return; // the workspace root holds no code of its own
    }
    let under = |file: &SourceFile, sub: &str| file.rel.starts_with(&format!("{dir}{sub}"));
    for dep in &m.deps {
        let ident = dep.name.replace('-', "_");
        let subdirs: &[&str] = match dep.kind {
            DepKind::Normal => &["src/"],
            DepKind::Build => &["build.rs"],
            DepKind::Dev => &["src/", "tests/", "benches/", "examples/"],
        };
        let used = files
            .iter()
            .filter(|f| subdirs.iter().any(|s| under(f, s)))
            .any(|f| f.code.iter().any(|l| names(l, &ident)));
        if !used {
            out.push(Violation::new(
                manifest_rel,
                RULE,
                format!(
                    "line {}: {} entry `{}` is named by no file of the crate; remove it",
                    dep.line,
                    dep.kind.table(),
                    dep.name
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crate_is_named_by_a_path_or_a_use_only() {
        assert!(names("let x = moe_eplb::plan(&l);", "moe_eplb"));
        assert!(names("use moe_eplb;", "moe_eplb"));
        assert!(names("pub use moe_eplb as eplb;", "moe_eplb"));
        assert!(names("extern crate moe_eplb;", "moe_eplb"));
        assert!(!names("let moe_eplb = 3;", "moe_eplb"));
        assert!(!names("let x = my_moe_eplb::plan();", "moe_eplb"));
    }

    #[test]
    fn unused_entries_of_each_table_are_reported_with_their_line() {
        let m = super::super::manifest::parse(
            "[package]\nname = \"demo\"\n[dependencies]\nrayon.workspace = true\nhalf.workspace = true\n[dev-dependencies]\ninsta.workspace = true\n",
        );
        let files = vec![
            SourceFile::new(
                "crates/demo/src/lib.rs".into(),
                "//! demo\nuse half::bf16;\n// rayon::join in a comment\n",
            ),
            SourceFile::new(
                "crates/demo/tests/it.rs".into(),
                "//! it\nfn t() { insta::assert_snapshot!(\"x\"); }\n",
            ),
            SourceFile::new("crates/other/src/lib.rs".into(), "//! other\nuse rayon::prelude::*;\n"),
        ];
        let mut out = Vec::new();
        check("crates/demo/Cargo.toml", &m, &files, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].message.contains("`rayon`") && out[0].message.contains("line 4"),
            "{}",
            out[0]
        );
    }
}
