//! Reads the parts of `Cargo.toml` files that the boundary rules need: the package name, the
//! member globs of the workspace, and every dependency with its kind, line and form.
//!
//! This is a deliberate TOML subset instead of `cargo metadata` so the checks run on a copy of
//! the sources (the planted-violation test) without a lock file, a network or a build, and so a
//! violation can name the exact line of the manifest. It understands the forms this workspace
//! uses: `name = "1"`, `name = { .. }`, `name.workspace = true`, `[dependencies.name]` tables,
//! `[target.'cfg(..)'.dependencies]` and `package = "real-name"` renames.

use std::path::{Path, PathBuf};

/// Which table a dependency is declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepKind {
    Normal,
    Dev,
    Build,
}

impl DepKind {
    pub fn table(self) -> &'static str {
        match self {
            DepKind::Normal => "[dependencies]",
            DepKind::Dev => "[dev-dependencies]",
            DepKind::Build => "[build-dependencies]",
        }
    }
}

/// One dependency entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// The package depended on (the `package = ..` value for renamed entries).
    pub name: String,
    pub kind: DepKind,
    /// 1-based line of the entry (of the table header for `[dependencies.name]` tables).
    pub line: usize,
    /// Inherits from `[workspace.dependencies]`.
    pub workspace: bool,
    /// Has a `path = ..` of its own.
    pub has_path: bool,
}

/// What the rules need of one manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub package: Option<String>,
    pub deps: Vec<Dep>,
    /// `[lints] workspace = true` is present.
    pub lints_workspace: bool,
    /// `[workspace] members = [..]` entries (root manifest only).
    pub members: Vec<String>,
}

enum Section {
    Package,
    Deps(DepKind),
    /// `[dependencies.name]`: the index of the dep being described.
    DepTable(usize),
    Lints,
    Workspace,
    Other,
}

fn dep_kind_of(table: &str) -> Option<DepKind> {
    // `[target.'cfg(..)'.dependencies]` counts as its plain table.
    let last = table.rsplit('.').next().unwrap_or(table);
    let base = if table.starts_with("target.") { last } else { table };
    match base {
        "dependencies" => Some(DepKind::Normal),
        "dev-dependencies" | "dev_dependencies" => Some(DepKind::Dev),
        "build-dependencies" | "build_dependencies" => Some(DepKind::Build),
        _ => None,
    }
}

/// The key of a `key = value` or `key.attr = value` line, unquoted; `None` for lines that
/// are not key/value pairs (continuations of multi-line arrays, blank lines).
fn line_key(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    let (key_part, value) = line.split_once('=')?;
    let key_part = key_part.trim();
    let key = if let Some(rest) = key_part.strip_prefix('"') {
        rest.split('"').next()?
    } else {
        key_part.split('.').next()?.trim()
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return None;
    }
    Some((key, value.trim()))
}

fn quoted_value_of<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    let mut rest = text;
    while let Some(i) = rest.find(field) {
        let before_ok = i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let after = rest[i + field.len()..].trim_start();
        if let (true, Some(v)) = (before_ok, after.strip_prefix('=')) {
            let v = v.trim_start().strip_prefix('"')?;
            return v.split('"').next();
        }
        rest = &rest[i + field.len()..];
    }
    None
}

fn has_true(text: &str, field: &str) -> bool {
    text.split([',', '{', '}']).any(|part| {
        let mut kv = part.splitn(2, '=');
        matches!((kv.next(), kv.next()), (Some(k), Some(v)) if k.trim() == field && v.trim() == "true")
    })
}

fn strip_comment(line: &str) -> &str {
    // A `#` outside a string starts a comment; manifests here never put `#` in strings except
    // inside quoted cfg expressions, which sit in headers that are parsed before this runs.
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Parses the subset described in the module doc.
pub fn parse(text: &str) -> Manifest {
    let mut m = Manifest::default();
    let mut section = Section::Other;
    let mut in_members = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let trimmed = raw.trim();
        if in_members {
            collect_quoted(trimmed, &mut m.members);
            if trimmed.contains(']') {
                in_members = false;
            }
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            let header = header.split(']').next().unwrap_or("").trim();
            section = match header {
                "package" => Section::Package,
                "lints" => Section::Lints,
                "workspace" => Section::Workspace,
                h => {
                    if let Some(kind) = dep_kind_of(h) {
                        Section::Deps(kind)
                    } else if let Some((table, name)) = h.split_once('.') {
                        match dep_kind_of(table) {
                            Some(kind) if !h.starts_with("target.") => {
                                m.deps.push(Dep {
                                    name: name.trim_matches('"').to_string(),
                                    kind,
                                    line: line_no,
                                    workspace: false,
                                    has_path: false,
                                });
                                Section::DepTable(m.deps.len() - 1)
                            }
                            _ => Section::Other,
                        }
                    } else {
                        Section::Other
                    }
                }
            };
            continue;
        }
        let line = strip_comment(raw);
        let Some((key, value)) = line_key(line) else {
            continue;
        };
        let dotted_attr = line
            .trim_start()
            .split('=')
            .next()
            .and_then(|k| k.split_once('.'))
            .map(|(_, a)| a.trim());
        match section {
            Section::Package if key == "name" => {
                m.package = value.trim_matches('"').split('"').next().map(str::to_string);
            }
            Section::Lints if key == "workspace" => m.lints_workspace = value == "true",
            Section::Workspace if key == "members" => {
                collect_quoted(value, &mut m.members);
                in_members = !value.contains(']');
            }
            Section::Deps(kind) => {
                let name = quoted_value_of(value, "package").unwrap_or(key).to_string();
                let workspace = (dotted_attr == Some("workspace") && value == "true") || has_true(value, "workspace");
                let has_path = dotted_attr == Some("path") || quoted_value_of(value, "path").is_some();
                m.deps.push(Dep {
                    name,
                    kind,
                    line: line_no,
                    workspace,
                    has_path,
                });
            }
            Section::DepTable(i) => {
                let dep = &mut m.deps[i];
                match key {
                    "workspace" => dep.workspace = value == "true",
                    "path" => dep.has_path = true,
                    "package" => {
                        if let Some(p) = value.trim_matches('"').split('"').next() {
                            dep.name = p.to_string();
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    m
}

fn collect_quoted(text: &str, out: &mut Vec<String>) {
    let mut parts = text.split('"');
    parts.next();
    while let Some(s) = parts.next() {
        out.push(s.to_string());
        parts.next();
    }
}

/// Directories of the workspace members named by the root manifest's `members` (a trailing
/// `/*` expands to every subdirectory holding a `Cargo.toml`), sorted.
pub fn member_dirs(root: &Path, root_manifest: &Manifest) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for member in &root_manifest.members {
        if let Some(parent) = member.strip_suffix("/*") {
            for entry in std::fs::read_dir(root.join(parent))? {
                let path = entry?.path();
                if path.join("Cargo.toml").is_file() {
                    dirs.push(path);
                }
            }
        } else if root.join(member).join("Cargo.toml").is_file() {
            dirs.push(root.join(member));
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}
