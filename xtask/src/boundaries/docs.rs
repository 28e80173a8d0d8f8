//! Drift detector for `docs/ARCHITECTURE.md`: every **Architecture Invariant:** paragraph
//! ends with an `Enforced by:` line, every rule it names is a rule of this command, and
//! every test it names (a backticked path whose last segment is the test function) exists as
//! a `fn` in the workspace. A renamed test or rule then fails here instead of leaving an
//! invariant that only exists as prose.

use super::Violation;
use super::source::SourceFile;

pub const ARCHITECTURE_DOC: &str = "docs/ARCHITECTURE.md";
const INVARIANT: &str = "**Architecture Invariant:**";
const ENFORCED: &str = "Enforced by:";

/// Backticked spans of `line`.
fn backticked(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Checks `text` (the doc) against the rule ids and the workspace sources.
pub fn check(text: Option<&str>, rule_ids: &[&str], files: &[SourceFile], out: &mut Vec<Violation>) {
    let Some(text) = text else {
        out.push(Violation::new(
            ARCHITECTURE_DOC,
            "architecture-doc",
            "the file is missing".into(),
        ));
        return;
    };
    let mut open: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let starts_section = line.starts_with('#') || line.starts_with(INVARIANT);
        if let (Some(at), true) = (open, starts_section) {
            out.push(Violation::new(
                ARCHITECTURE_DOC,
                "architecture-doc",
                format!("line {at}: invariant without an `{ENFORCED}` line"),
            ));
            open = None;
        }
        if line.starts_with(INVARIANT) {
            open = Some(n);
        }
        if !line.starts_with(ENFORCED) {
            continue;
        }
        open = None;
        for span in backticked(line) {
            if line.contains(&format!("rule `{span}`")) {
                if !rule_ids.contains(&span) {
                    out.push(Violation::new(
                        ARCHITECTURE_DOC,
                        "architecture-doc",
                        format!("line {n}: `{span}` is not a check-boundaries rule"),
                    ));
                }
            } else if span.contains("::") {
                let name = span.rsplit("::").next().unwrap_or(span);
                let needle = format!("fn {name}(");
                if !files.iter().any(|f| f.code.iter().any(|l| l.contains(&needle))) {
                    out.push(Violation::new(
                        ARCHITECTURE_DOC,
                        "architecture-doc",
                        format!("line {n}: no test `fn {name}` in the workspace (named as `{span}`)"),
                    ));
                }
            }
        }
    }
    if let Some(at) = open {
        out.push(Violation::new(
            ARCHITECTURE_DOC,
            "architecture-doc",
            format!("line {at}: invariant without an `{ENFORCED}` line"),
        ));
    }
}
