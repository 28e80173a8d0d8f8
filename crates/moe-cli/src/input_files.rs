//! Input files read whole (placement YAML, load JSON, previous plans): refused past a byte
//! bound before they are read into memory, so a wrong path (a disk image, `/dev/zero`) fails
//! with a message instead of exhausting memory.

use std::io::Read;
use std::path::Path;

use anyhow::Context;

/// The text of `path` (the input `what`), refused when longer than `limit` bytes.
pub fn read_bounded(path: &Path, what: &str, limit: u64) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {what} `{}`", path.display()))?;
    let mut text = String::new();
    // One byte past the limit tells a file at the limit from a longer one, whatever its
    // metadata says (devices and pipes report no length).
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)
        .with_context(|| format!("reading {what} `{}`", path.display()))?;
    if text.len() as u64 > limit {
        anyhow::bail!(
            "{what} `{}` is larger than the limit of {limit} bytes (docs/LIMITS.md)",
            path.display()
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_past_the_bound_are_refused_before_being_read_whole() {
        let e = read_bounded(Path::new("/dev/zero"), "load file", 1 << 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("load file `/dev/zero` is larger than the limit of 1024"),
            "{e}"
        );
        let d = std::env::temp_dir().join(format!("moe-cli-input-files-{}", std::process::id()));
        std::fs::write(&d, "0123").unwrap();
        assert_eq!(read_bounded(&d, "f", 4).unwrap(), "0123");
        assert!(read_bounded(&d, "f", 3).is_err());
        std::fs::remove_file(&d).unwrap();
    }
}
