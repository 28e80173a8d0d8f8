//! Rule `gpu-cfg`: the GPU features choose which modules are compiled, never code inside one.
//!
//! A `cfg` that names a feature of [`GPU_FEATURES`] may only be the attribute of a `mod` or
//! `use` item (other attributes such as `#[path]` may sit between them). Everything else is
//! written once and compiled in both builds: moe-kernels' `cuda/absent/` gives the default
//! build the same names as `cuda/enabled/`, each failing with `MoeError::NotCompiledWithCuda`.
//! So a default build type-checks every caller of the CUDA code, and the `cuda` build differs
//! from it only in which module a name comes from, not in what any function does.
//!
//! Unlike the pattern rules this one reads the line after a match, so it is file-level.

use super::Violation;
use super::source::SourceFile;
/// Cargo features that build GPU code: the ones `cargo xtask test` compile-checks.
use crate::legs::GPU_FEATURES;

/// Rule id.
pub const RULE: &str = "gpu-cfg";

/// What the rule keeps absent, for `--list`.
pub const WHAT: &str = "a cfg naming the cuda or nccl feature sits only on a `mod` or `use` item: the features choose modules, never code inside one (cuda/absent mirrors cuda/enabled)";

/// Checks every line of `file` that names a GPU feature in code (comments are blanked).
pub fn check(file: &SourceFile, out: &mut Vec<Violation>) {
    for (i, line) in file.code.iter().enumerate() {
        let squashed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(feature) = GPU_FEATURES
            .iter()
            .find(|f| squashed.contains(&format!("feature=\"{f}\"")))
        else {
            continue;
        };
        let attribute = squashed.starts_with("#[cfg(");
        // The item the attribute applies to: the next code line that is not an attribute.
        let item = file.code[i + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with("#["));
        if attribute && item.is_some_and(is_mod_or_use) {
            continue;
        }
        let what = if attribute {
            format!("`cfg(feature = \"{feature}\")` on an item that is not a `mod` or `use`")
        } else {
            format!("names feature \"{feature}\" outside a `#[cfg(..)]` attribute")
        };
        out.push(Violation::new(
            &file.rel,
            RULE,
            format!(
                "line {}: {what}; put the code in a module chosen by the feature (with the same names in the other build, as moe-kernels' cuda/absent does)",
                i + 1
            ),
        ));
    }
}

/// `mod x;`, `pub use a::b;`, `pub(crate) mod y { .. }` and the like.
fn is_mod_or_use(item: &str) -> bool {
    let mut rest = item;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if rest.starts_with('(') {
            rest = rest.find(')').map_or("", |p| rest[p + 1..].trim_start());
        }
    }
    rest.starts_with("mod ") || rest.starts_with("use ")
}
