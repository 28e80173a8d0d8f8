//! Tidy rules over every source file: a `//!` header saying what the file holds, and a
//! `// SAFETY:` argument above every `unsafe` block or impl.

use super::Violation;
use super::source::{SourceFile, word_positions};

/// How far above an `unsafe` block its `// SAFETY:` comment may start (a longer argument may
/// run on; the contiguous comment block right above counts whole).
const SAFETY_WINDOW: usize = 3;

pub fn check(file: &SourceFile, out: &mut Vec<Violation>) {
    doc_comment(file, out);
    safety_comment(file, out);
}

fn doc_comment(file: &SourceFile, out: &mut Vec<Violation>) {
    let first = file.raw.iter().find(|l| !l.trim().is_empty());
    if !first.is_some_and(|l| l.trim_start().starts_with("//!")) {
        out.push(Violation::new(
            &file.rel,
            "doc-comment",
            "line 1: the file does not start with a `//!` comment saying what it holds".into(),
        ));
    }
}

/// True when `code` opens an `unsafe` block or implements an unsafe trait.
fn opens_unsafe(code: &str) -> bool {
    word_positions(code, "unsafe").into_iter().any(|pos| {
        let rest = code[pos + "unsafe".len()..].trim_start();
        rest.starts_with('{') || rest.starts_with("impl")
    })
}

fn safety_comment(file: &SourceFile, out: &mut Vec<Violation>) {
    for (i, code) in file.code.iter().enumerate() {
        if !opens_unsafe(code) {
            continue;
        }
        let has = |l: &String| l.contains("SAFETY:");
        let mut justified = has(&file.raw[i]) || file.raw[i.saturating_sub(SAFETY_WINDOW)..i].iter().any(has);
        // Walk up a contiguous `//` block directly above.
        let mut j = i;
        while !justified && j > 0 && file.raw[j - 1].trim_start().starts_with("//") {
            j -= 1;
            justified = has(&file.raw[j]);
        }
        if !justified {
            out.push(Violation::new(
                &file.rel,
                "safety-comment",
                format!(
                    "line {}: `unsafe` without a `// SAFETY:` comment in the {SAFETY_WINDOW} lines above",
                    i + 1
                ),
            ));
        }
    }
}
