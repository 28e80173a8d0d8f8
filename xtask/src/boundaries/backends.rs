//! Rule `assembler-no-concrete-backend`, with the backend set read from its one home: the
//! registry of `moe` (`crates/moe/src/registry.rs`, one `entry::<Type>("name")` per backend).
//! xtask cannot depend on `moe` (it would build every backend to lint), so it parses the
//! registry's source instead of keeping a copy of the names: a backend added there is known to
//! the rule at once, and a registry this parser cannot read is itself a violation.

use super::Violation;
use super::patterns::matches_prefix;
use super::source::{SourceFile, word_positions};

pub const RULE: &str = "assembler-no-concrete-backend";
pub const WHAT: &str = "the assembler names no concrete backend type and compares no backend name; only the factory knows the set, read from the registry's entries (invariant 3)";

/// The file that lists every backend.
pub const REGISTRY_FILE: &str = "crates/moe/src/registry.rs";
/// Files of `crates/moe/src` that form the factory/registry (they know the concrete set).
pub const FACTORY_FILES: &[&str] = &["crates/moe/src/factory", "crates/moe/src/registry"];
/// Where the rule looks.
const SCOPE: &str = "crates/moe/src/";

/// One registry entry: the name `MoeConfig::backend` accepts and the backend's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub ty: String,
}

/// The entries of the registry's source, in order: every `entry::<Type>("name")` outside
/// comments. Empty when the file holds none.
pub fn parse_registry(file: &SourceFile) -> Vec<Backend> {
    const OPEN: &str = "entry::<";
    let mut out = Vec::new();
    for line in &file.code {
        let mut rest = line.as_str();
        while let Some(at) = rest.find(OPEN) {
            rest = &rest[at + OPEN.len()..];
            let Some((ty, tail)) = rest.split_once(">(\"") else {
                continue;
            };
            let Some((name, _)) = tail.split_once('"') else {
                continue;
            };
            let ty = ty.rsplit("::").next().unwrap_or(ty).trim();
            if !ty.is_empty() && !name.is_empty() {
                out.push(Backend {
                    name: name.to_string(),
                    ty: ty.to_string(),
                });
            }
        }
    }
    out
}

/// Runs the rule over `files`.
pub fn check(files: &[SourceFile], out: &mut Vec<Violation>) {
    let backends = match files.iter().find(|f| f.rel == REGISTRY_FILE) {
        Some(f) => parse_registry(f),
        None => Vec::new(),
    };
    if backends.is_empty() {
        out.push(Violation::new(
            REGISTRY_FILE,
            RULE,
            "no `entry::<Type>(\"name\")` found: the rule reads the backend set from the registry's entries".into(),
        ));
        return;
    }
    let in_scope = |rel: &str| matches_prefix(SCOPE, rel) && !FACTORY_FILES.iter().any(|p| matches_prefix(p, rel));
    for file in files.iter().filter(|f| in_scope(&f.rel)) {
        for (i, line) in file.code.iter().enumerate() {
            if let Some(msg) = names_concrete_backend(line, &backends) {
                out.push(Violation::new(&file.rel, RULE, format!("line {}: {msg}", i + 1)));
            }
        }
    }
}

fn names_concrete_backend(line: &str, backends: &[Backend]) -> Option<String> {
    if let Some(b) = backends.iter().find(|b| !word_positions(line, &b.ty).is_empty()) {
        return Some(format!("names `{}`; only the factory knows concrete backends", b.ty));
    }
    // Backend modules are named after the backend (`cpu-fused` lives in `cpu_fused`).
    for b in backends {
        let module = b.name.replace('-', "_");
        if line.contains(&format!("moe_backends::{module}")) {
            return Some(format!(
                "reaches `moe_backends::{module}`; only the factory knows concrete backends"
            ));
        }
    }
    let compares = ["==", "!=", "=>", "matches!", ".eq(", "starts_with("]
        .iter()
        .any(|op| line.contains(op));
    backends
        .iter()
        .find(|b| compares && line.contains(&format!("\"{}\"", b.name)))
        .map(|b| format!("branches on the backend name \"{}\"; behaviour must come from the backend's capabilities or scheduler_kind", b.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_of_the_registry_is_read() {
        let text = std::fs::read_to_string(crate::project_root().join(REGISTRY_FILE)).unwrap();
        let file = SourceFile::new(REGISTRY_FILE.into(), &text);
        let backends = parse_registry(&file);
        let calls: usize = file.code.iter().map(|l| l.matches("entry::<").count()).sum();
        assert!(!backends.is_empty());
        assert_eq!(
            backends.len(),
            calls,
            "an entry the parser could not read: {backends:?}"
        );
        let mut names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), backends.len(), "a name registered twice: {backends:?}");
        for b in &backends {
            assert!(
                file.code
                    .iter()
                    .any(|l| l.starts_with("use ") && !word_positions(l, &b.ty).is_empty()),
                "{} is not imported by the registry",
                b.ty
            );
        }
    }

    #[test]
    fn entries_in_comments_and_other_calls_are_not_backends() {
        let text =
            "// entry::<Old>(\"old\")\nlet x = entry::<a::b::New>(\"new\"), entry::<Two>(\"two\");\nentry::<T>(name)\n";
        let file = SourceFile::new("r.rs".into(), text);
        let names: Vec<String> = parse_registry(&file)
            .into_iter()
            .map(|b| format!("{}={}", b.name, b.ty))
            .collect();
        assert_eq!(names, ["new=New", "two=Two"]);
    }
}
