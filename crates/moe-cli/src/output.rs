//! Output files: where one goes is checked before any work, and it is written atomically.
//!
//! A run that dies while writing (a crash, a full disk, a file-size limit) must leave the
//! previous file whole: the bytes go to a temporary file beside the target, are flushed to
//! disk, and only then renamed over it (rename is atomic within a directory). An output that is
//! one of the run's inputs is refused, as is one whose directory cannot take a new file, before
//! the run loads anything.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The directory a file at `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses `path` as the output `what` when it is a directory, when its directory is missing or
/// cannot take a new file, or when it names the same file as one of `inputs` (also through
/// another path to it).
pub fn check_output(path: &Path, what: &str, inputs: &[&Path]) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!("{what} `{}` is a directory", path.display());
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        anyhow::bail!("the directory of {what} `{}` does not exist", path.display());
    }
    let target = target_of(path).with_context(|| format!("resolving {what} `{}`", path.display()))?;
    let name = path.file_name().unwrap_or_default();
    for input in inputs {
        if fs::canonicalize(input).is_ok_and(|i| i == target) {
            anyhow::bail!(
                "{what} `{}` is the input `{}`: writing it would destroy the input",
                path.display(),
                input.display()
            );
        }
    }
    if is_special(path) {
        // A device or pipe (`/dev/null`, `/dev/stdout`) is written in place: nothing to probe.
        return Ok(());
    }
    let probe = dir.join(format!(".{}.probe-{}", name.to_string_lossy(), std::process::id()));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| format!("{what} `{}`: its directory does not take new files", path.display()))
}

/// An existing target that is not a regular file (a device such as `/dev/null`, a pipe): it is
/// written in place, never replaced by a rename.
fn is_special(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Where a file at `path` is or would be: its canonical directory joined with its name.
fn target_of(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path.file_name().context("names no file")?;
    Ok(fs::canonicalize(parent_dir(path))?.join(name))
}

/// Whether two output paths name the same file (whether or not it exists yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    matches!((target_of(a), target_of(b)), (Ok(x), Ok(y)) if x == y)
}

/// Writes `bytes` as the file `path` (the output `what`) atomically: the previous file, if any,
/// stays whole until the new one is complete on disk.
pub fn write_atomic(path: &Path, what: &str, bytes: &[u8]) -> anyhow::Result<()> {
    if is_special(path) {
        return fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(bytes))
            .with_context(|| format!("writing {what} `{}`", path.display()));
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{what} `{}` names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let done = written.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {what} `{}`", path.display()));
    }
    // The rename itself reaches the disk with the directory's entry; a directory that cannot be
    // opened or synced (some file systems) still has the complete file under its name.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The files a run reads from a checkpoint directory (its top level), for [`check_output`].
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("moe-cli-output-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let d = scratch("atomic");
        let p = d.join("out.json");
        write_atomic(&p, "output", b"first").unwrap();
        write_atomic(&p, "output", b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "only the output is left");
        // A device is written in place, never replaced.
        write_atomic(Path::new("/dev/null"), "output", b"discarded").unwrap();
        assert!(is_special(Path::new("/dev/null")));
        check_output(Path::new("/dev/null"), "output", &[]).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn outputs_that_are_inputs_or_have_no_directory_are_refused() {
        let d = scratch("check");
        let input = d.join("x.safetensors");
        fs::write(&input, b"x").unwrap();
        // The same file through another spelling of its path.
        let other = d.join(".").join("x.safetensors");
        let e = check_output(&other, "--output", &[&input]).unwrap_err().to_string();
        assert!(e.contains("is the input"), "{e}");
        let e = check_output(&d.join("missing/y.safetensors"), "--output", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_output(&d, "--output", &[]).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        check_output(&d.join("y.safetensors"), "--output", &[&input]).unwrap();
        assert!(same_file(&d.join("y.json"), &d.join(".").join("y.json")));
        assert!(!same_file(&d.join("y.json"), &d.join("z.json")));
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "the probe is removed");
        fs::remove_dir_all(&d).unwrap();
    }
}
