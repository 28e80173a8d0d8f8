//! Sharing rank 0's NCCL unique id before the communicator exists: through a file that rank 0
//! writes atomically and the others poll for ([`NcclGroup::from_unique_id_file`], which also
//! starts the liveness files), or over a host process group ([`NcclGroup::from_group`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use cudarc::nccl::{result as nccl, sys};
use moe_core::{DType, Deadline, HostStorage, MoeError, ProcessGroup, Result, Tensor};

use super::ffi::load_nccl;
use super::liveness::{Liveness, with_suffix};
use super::{NcclGroup, comm_err};

/// Bytes of an `ncclUniqueId`.
const ID_BYTES: usize = 128;
/// First word of a unique-id file whose rank 0 failed to create the id.
const FAILED: &str = "error:";

/// A new NCCL unique id (rank 0 of a bootstrap creates it and shares it with the others).
fn new_unique_id() -> Result<[u8; ID_BYTES]> {
    let id = load_nccl("creating the NCCL unique id", nccl::get_uniqueid)?;
    Ok(id.internal.map(|c| c as u8))
}

/// A unique id created by rank 0 of `group` and gathered by every rank over it (`what` names
/// it in the error a malformed id gets).
pub(super) fn shared_unique_id(group: &dyn ProcessGroup, what: &str, deadline: Deadline) -> Result<sys::ncclUniqueId> {
    let (rank, world) = (group.rank(), group.size());
    let counts: Vec<usize> = (0..world).map(|r| usize::from(r == 0)).collect();
    let local = if rank == 0 {
        new_unique_id()?.to_vec()
    } else {
        Vec::new()
    };
    let t = Tensor::from_host(DType::U8, vec![counts[rank], ID_BYTES], HostStorage::Bytes(local))?;
    let all = group.all_gather_v(&t, &counts, deadline)?;
    id_from_bytes(all.as_bytes(what)?).ok_or_else(|| comm_err(Some(0), format!("malformed {what}")))
}

fn id_from_bytes(bytes: &[u8]) -> Option<sys::ncclUniqueId> {
    let arr: [u8; ID_BYTES] = bytes.try_into().ok()?;
    Some(sys::ncclUniqueId {
        internal: arr.map(|b| b as std::ffi::c_char),
    })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digits = s.trim().as_bytes().chunks_exact(2);
    if !digits.remainder().is_empty() {
        return None;
    }
    digits
        .map(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok())
        .collect()
}

impl NcclGroup {
    /// Joins the world of `world` ranks as `rank` on GPU `device_ordinal`, the unique id shared
    /// through the file `path` (rank 0 writes it, the others wait for it until `deadline`).
    /// Use a fresh path per launch: a stale file from an earlier run would make the other
    /// ranks join a dead world (and fail at the deadline). The liveness files
    /// `<path>.rank<r>` sit next to it.
    pub fn from_unique_id_file(
        path: impl AsRef<Path>,
        rank: usize,
        world: usize,
        device_ordinal: usize,
        deadline: Deadline,
    ) -> Result<NcclGroup> {
        let path = path.as_ref();
        if world == 0 || rank >= world {
            return Err(MoeError::config("rank", format!("rank {rank} in a world of {world}")));
        }
        let liveness = Liveness::create(path, rank, world)?;
        let publish = |text: String| {
            let tmp = with_suffix(path, &format!(".tmp{}", std::process::id()));
            fs::write(&tmp, text)
                .and_then(|()| fs::rename(&tmp, path))
                .map_err(|e| {
                    comm_err(
                        None,
                        format!("publishing the NCCL unique id at {}: {e}", path.display()),
                    )
                })
        };
        let id = if rank == 0 {
            let id = match new_unique_id() {
                Ok(id) => id,
                Err(e) => {
                    // Tell the waiting ranks at once instead of leaving them to their deadline.
                    let _ = publish(format!("{FAILED} {e}\n"));
                    return Err(e);
                }
            };
            publish(format!("{}\n", to_hex(&id)))?;
            id.to_vec()
        } else {
            loop {
                let text = fs::read_to_string(path).unwrap_or_default();
                if let Some(why) = text.strip_prefix(FAILED) {
                    return Err(comm_err(
                        Some(0),
                        format!("rank 0 could not create the NCCL unique id:{}", why.trim_end()),
                    ));
                }
                if let Some(b) = from_hex(&text).filter(|b| b.len() == ID_BYTES) {
                    break b;
                }
                if deadline.expired() {
                    return Err(comm_err(
                        Some(0),
                        format!(
                            "rank 0 did not publish the NCCL unique id at {} before the deadline",
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let id = id_from_bytes(&id).ok_or_else(|| comm_err(Some(0), "malformed NCCL unique id"))?;
        let group = Self::init(id, rank, world, device_ordinal, deadline, Some(liveness))?;
        if rank == 0 {
            // Every rank has joined, so every rank has read the id: a stale file can only
            // mislead a later launch.
            let _ = fs::remove_file(path);
        }
        Ok(group)
    }

    /// Joins the world of the host process group `group` (same ranks) on GPU
    /// `device_ordinal`; rank 0's unique id travels over `group`.
    pub fn from_group(group: &dyn ProcessGroup, device_ordinal: usize, deadline: Deadline) -> Result<NcclGroup> {
        let id = shared_unique_id(group, "NCCL unique id", deadline)?;
        Self::init(id, group.rank(), group.size(), device_ordinal, deadline, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_round_trip_through_hex() {
        let id: Vec<u8> = (0..ID_BYTES).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(from_hex(&format!("{}\n", to_hex(&id))), Some(id));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
