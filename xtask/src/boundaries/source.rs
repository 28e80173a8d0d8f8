//! Source files as the pattern rules see them: every `.rs` file of the workspace (outside
//! `target/`, hidden folders and vendored `fixtures/`), each line with comments blanked out
//! so prose about a forbidden thing ("schedulers never write `repeat_idx`") is not mistaken
//! for doing it.

use std::path::{Path, PathBuf};

/// One source file.
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the root, with `/` separators (what violations print).
    pub rel: String,
    /// Lines as written.
    pub raw: Vec<String>,
    /// The same lines with `//` and `/* */` comments replaced by spaces; strings are kept.
    pub code: Vec<String>,
}

impl SourceFile {
    pub fn new(rel: String, text: &str) -> SourceFile {
        let raw: Vec<String> = text.lines().map(str::to_string).collect();
        let code = strip_comments(&raw);
        SourceFile { rel, raw, code }
    }
}

const SKIP_DIRS: &[&str] = &["target", "fixtures", "node_modules"];

/// Every `.rs` file under `root`, sorted by path.
pub fn collect(root: &Path) -> std::io::Result<Vec<SourceFile>> {
    let mut paths = Vec::new();
    walk(root, &mut paths)?;
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        files.push(SourceFile::new(relative(root, &p), &text));
    }
    Ok(files)
}

/// `path` relative to `root`, with `/` separators on every platform.
pub fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if !name.starts_with('.') && !SKIP_DIRS.contains(&name.as_str()) {
                walk(&path, out)?;
            }
        } else if ty.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Blanks comments out of `lines`, tracking strings, char literals and block comments across
/// lines. Raw strings are treated as plain strings, which is exact for every raw string that
/// holds no `"`.
pub fn strip_comments(lines: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(lines.len());
    let mut in_block = 0usize;
    let mut in_str = false;
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        let mut code = String::with_capacity(line.len());
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if in_block > 0 {
                if c == '*' && next == Some('/') {
                    in_block -= 1;
                    code.push_str("  ");
                    i += 2;
                } else if c == '/' && next == Some('*') {
                    in_block += 1;
                    code.push_str("  ");
                    i += 2;
                } else {
                    code.push(' ');
                    i += 1;
                }
                continue;
            }
            if in_str {
                code.push(c);
                if c == '\\' {
                    if let Some(n) = next {
                        code.push(n);
                    }
                    i += 2;
                    continue;
                }
                if c == '"' {
                    in_str = false;
                }
                i += 1;
                continue;
            }
            match (c, next) {
                ('/', Some('/')) => break,
                ('/', Some('*')) => {
                    in_block = 1;
                    code.push_str("  ");
                    i += 2;
                }
                ('"', _) => {
                    in_str = true;
                    code.push(c);
                    i += 1;
                }
                ('\'', _) => {
                    // A char literal ('"', '\'', 'x') is copied whole; a lifetime is one char.
                    let len = char_literal_len(&chars[i..]);
                    code.extend(&chars[i..i + len]);
                    i += len;
                }
                _ => {
                    code.push(c);
                    i += 1;
                }
            }
        }
        out.push(code);
    }
    out
}

fn char_literal_len(s: &[char]) -> usize {
    match s {
        ['\'', '\\', _, '\'', ..] => 4,
        ['\'', '\\', ..] => s.iter().skip(2).position(|&c| c == '\'').map_or(1, |p| p + 3),
        ['\'', _, '\'', ..] => 3,
        _ => 1,
    }
}

/// Byte offsets of `word` in `line` where it stands as a whole identifier.
pub fn word_positions(line: &str, word: &str) -> Vec<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(p) = line[from..].find(word) {
        let start = from + p;
        let end = start + word.len();
        let before_ok = !line[..start].ends_with(is_ident);
        let after_ok = !line[end..].starts_with(is_ident);
        if before_ok && after_ok {
            found.push(start);
        }
        from = end;
    }
    found
}
