//! The blocking data-plane communicator (see the `nccl_group` module docs, **Data plane**):
//! whether it is wanted, its creation on a helper thread from a fresh unique id, the warm-up
//! calls that make its connections, and the switch between it and the non-blocking one.

use std::ffi::c_int;
use std::time::{Duration, Instant};

use cudarc::nccl::{result as nccl, sys};
use moe_core::{Deadline, Result};

use super::bootstrap::shared_unique_id;
use super::completion::PROBE_EVERY;
use super::ffi::{self, Op, RawComm, issue, last_error};
use super::liveness::Liveness;
use super::{NcclGroup, comm_err};

/// Environment variable choosing the data plane: `nonblocking` runs every collective on the
/// non-blocking communicator (no second communicator is created); anything else (default)
/// creates the blocking data-plane communicator at init and runs collectives on it.
pub const DATA_PLANE_ENV: &str = "MOE_NCCL_DATA_PLANE";

pub(super) fn data_plane_wanted() -> bool {
    !matches!(
        std::env::var(DATA_PLANE_ENV).as_deref(),
        Ok("nonblocking" | "non-blocking" | "0")
    )
}

/// Bytes per rank of the warm-up collectives that make the data plane's connections.
const WARM_BYTES: usize = 4096;

/// Creates the blocking data-plane communicator from `id` and makes its connections (p2p with
/// every peer, the ring of all-gather and broadcast) by running each kind of call once; every
/// rank runs the same calls. Runs on a helper thread: blocking calls wait for the peers.
fn init_data_plane(
    id: sys::ncclUniqueId,
    rank: usize,
    world: usize,
    version: c_int,
    stream: usize,
    buf: u64,
) -> std::result::Result<RawComm, String> {
    let (raw, created) = ffi::comm_init(id, rank, world, version, true);
    created.map_err(|e| format!("creating the data-plane communicator: {:?} {}", e.0, last_error(raw)))?;
    let mut comm = RawComm(raw);
    let stream = stream as sys::cudaStream_t;
    let w = WARM_BYTES as u64;
    let mut p2p = Vec::new();
    for peer in (0..world).filter(|&q| q != rank) {
        p2p.extend(Op::swap(
            peer,
            (buf, WARM_BYTES),
            (buf + w * (1 + peer as u64), WARM_BYTES),
        ));
    }
    let groups: [(&str, Vec<Op>); 3] = [
        ("send/recv", p2p),
        (
            "all-gather",
            vec![Op::AllGather {
                send: buf + w * rank as u64,
                recv: buf,
                bytes: WARM_BYTES,
            }],
        ),
        (
            "broadcast",
            vec![Op::Broadcast {
                send: buf,
                recv: buf,
                bytes: WARM_BYTES,
                root: 0,
            }],
        ),
    ];
    for (what, ops) in &groups {
        let mut res = nccl::group_start().map(|_| ()).map_err(|e| format!("{:?}", e.0));
        if res.is_ok() {
            for op in ops {
                if let Err(e) = issue(comm.0, stream, op) {
                    res = Err(format!("{:?}", e.0));
                    break;
                }
            }
            if let Err(e) = nccl::group_end() {
                res = res.and(Err(format!("{:?}", e.0)));
            }
        }
        if let Err(e) = res {
            let why = format!("connecting the data plane ({what}): {e} {}", last_error(comm.0));
            ffi::comm_abort(&mut comm);
            return Err(why);
        }
    }
    Ok(comm)
}

impl NcclGroup {
    /// Which communicator collectives run on: `"blocking"` (the data plane) or `"nonblocking"`.
    pub fn data_plane(&self) -> &'static str {
        if self.lock().active().1 {
            "blocking"
        } else {
            "nonblocking"
        }
    }

    /// Switches collectives between the blocking data plane (`true`; it must have been created
    /// at init, i.e. `MOE_NCCL_DATA_PLANE` was not `nonblocking`) and the non-blocking
    /// communicator (`false`). Every rank must switch at the same point (a benchmark compares
    /// the two this way); the results are the same either way.
    pub fn set_blocking_data_plane(&self, on: bool) -> Result<()> {
        let mut inner = self.lock();
        if on && inner.data.0.is_null() {
            return Err(comm_err(
                None,
                format!(
                    "NCCL rank {}: no blocking data plane ({DATA_PLANE_ENV}=nonblocking, or aborted)",
                    self.rank
                ),
            ));
        }
        inner.use_data = on;
        Ok(())
    }

    /// Creates the blocking data-plane communicator (see the module docs, **Data plane**): a
    /// fresh unique id travels over the non-blocking communicator, then a helper thread creates
    /// the communicator and makes its connections while this thread waits for it against
    /// `deadline`, watching for peers that exit. At the deadline the helper is left blocked in
    /// NCCL (it cannot be interrupted) and the group is failed and aborted.
    pub(super) fn start_data_plane(&self, version: c_int, deadline: Deadline) -> Result<()> {
        let what = "data-plane init";
        let (rank, world) = (self.rank, self.size);
        let id = shared_unique_id(self, "data-plane NCCL unique id", deadline)?;
        let (warm, buf) = self.buffer(WARM_BYTES * (world + 1))?;
        let stream = self.dev.stream().clone();
        let ctx = stream.context().clone();
        let cu_stream = stream.cu_stream() as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("nccl-data-plane-{rank}"))
            .spawn(move || {
                let res = match ctx.bind_to_thread() {
                    Ok(()) => init_data_plane(id, rank, world, version, cu_stream, buf),
                    Err(e) => Err(format!("binding the context: {e}")),
                };
                let _ = tx.send(res);
            })
            .map_err(|e| comm_err(None, format!("NCCL {what}: spawning the helper thread: {e}")))?;
        let mut inner = self.lock();
        let mut probe = Instant::now();
        let raw = loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(Ok(raw)) => break raw,
                Ok(Err(why)) => return Err(self.fail(&mut inner, what, why, None)),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(&mut inner, what, "the helper thread died".into(), None));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if deadline.expired() {
                return Err(self.fail(&mut inner, what, "not complete at the deadline".into(), None));
            }
            if probe.elapsed() >= PROBE_EVERY {
                probe = Instant::now();
                if let Some(dead) = self.liveness.as_ref().and_then(Liveness::dead_peer) {
                    return Err(self.fail(&mut inner, what, "a peer exited".into(), Some(dead)));
                }
            }
        };
        inner.data = raw;
        inner.use_data = true;
        // The warm-up calls were queued on the device's stream: wait for them before the
        // buffer goes.
        self.wait(&mut inner, what, deadline, true)?;
        drop(inner);
        drop(warm);
        Ok(())
    }
}
