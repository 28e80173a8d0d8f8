//! The liveness files of a world bootstrapped from a unique-id file (`<id file>.rank<r>`: the
//! rank's process id and the number of the collective it last entered), and the diagnosis they
//! give a waiting rank: a peer whose process exited, one that never started, or one that has
//! not entered the collective (see the `nccl_group` module docs, **Naming the peer**).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use moe_core::Result;

use super::comm_err;

/// Appends `suffix` to a path's file name.
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether process `pid` of this machine still runs (a zombie counts as exited).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !matches!(rest.chars().next(), Some('Z' | 'X')))
            .unwrap_or(true),
    }
}

/// The liveness files of a file-bootstrapped world (see the module docs).
pub(super) struct Liveness {
    base: PathBuf,
    rank: usize,
    world: usize,
    file: fs::File,
}

impl Liveness {
    fn path(base: &Path, rank: usize) -> PathBuf {
        with_suffix(base, &format!(".rank{rank}"))
    }

    pub(super) fn create(base: &Path, rank: usize, world: usize) -> Result<Liveness> {
        let path = Self::path(base, rank);
        let file = fs::File::create(&path)
            .map_err(|e| comm_err(None, format!("creating the liveness file {}: {e}", path.display())))?;
        let l = Liveness {
            base: base.to_path_buf(),
            rank,
            world,
            file,
        };
        l.enter(0);
        Ok(l)
    }

    /// Records that this rank entered collective `seq` (fixed-width, rewritten in place).
    pub(super) fn enter(&self, seq: u64) {
        let line = format!("{:>10} {:>20}\n", std::process::id(), seq);
        // Best effort: a failed write only weakens a later diagnosis.
        let _ = self.file.write_all_at(line.as_bytes(), 0);
    }

    /// (pid, last collective) of rank `r`, if its file exists and reads whole.
    fn read(&self, r: usize) -> Option<(u32, u64)> {
        let s = fs::read_to_string(Self::path(&self.base, r)).ok()?;
        let mut it = s.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.world).filter(move |&r| r != self.rank)
    }

    /// A peer whose process has exited.
    pub(super) fn dead_peer(&self) -> Option<(usize, String)> {
        self.peers().find_map(|r| {
            let (pid, seq) = self.read(r)?;
            (!process_alive(pid)).then(|| {
                (
                    r,
                    format!("rank {r} (pid {pid}) exited after entering collective #{seq}"),
                )
            })
        })
    }

    /// The peer to blame for collective `seq` not completing: one that exited, one that never
    /// started, or one that has not entered it.
    pub(super) fn diagnose(&self, seq: u64) -> Option<(usize, String)> {
        self.dead_peer()
            .or_else(|| {
                self.peers()
                    .find(|&r| self.read(r).is_none())
                    .map(|r| (r, format!("rank {r} never started (no liveness file)")))
            })
            .or_else(|| {
                self.peers().find_map(|r| {
                    let (pid, last) = self.read(r)?;
                    (last < seq).then(|| {
                        (
                            r,
                            format!("rank {r} (pid {pid}) has not entered collective #{seq} (its last was #{last})"),
                        )
                    })
                })
            })
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        let _ = fs::remove_file(Self::path(&self.base, self.rank));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_names_an_exited_peer_then_one_that_lags() {
        let dir = std::env::temp_dir().join(format!("nccl-liveness-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let base = dir.join("id");
        let me = Liveness::create(&base, 0, 3).unwrap();
        // Rank 1 is this process too (alive), rank 2 a child that has exited.
        let peer = Liveness::create(&base, 1, 3).unwrap();
        assert_eq!(me.diagnose(1).map(|d| d.0), Some(2), "rank 2 never started");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        fs::write(Liveness::path(&base, 2), format!("{:>10} {:>20}\n", child.id(), 5)).unwrap();
        let (r, why) = me.dead_peer().unwrap();
        assert_eq!(r, 2, "{why}");
        assert!(why.contains("exited"), "{why}");
        fs::write(
            Liveness::path(&base, 2),
            format!("{:>10} {:>20}\n", std::process::id(), 7),
        )
        .unwrap();
        assert!(me.dead_peer().is_none());
        peer.enter(6);
        let (r, why) = me.diagnose(7).unwrap();
        assert_eq!(r, 1, "{why}");
        assert!(why.contains("has not entered collective #7"), "{why}");
        peer.enter(7);
        assert!(me.diagnose(7).is_none());
        drop((me, peer));
        let _ = fs::remove_dir_all(&dir);
    }
}
