//! A process group over NCCL (feature `nccl`): one rank per process and GPU, collectives on
//! device tensors, queued on the device's one stream (the stream every moe-kernels kernel runs
//! on, so a kernel's output can be exchanged without extra synchronisation).
//!
//! **Deadlines.** The communicator is created non-blocking (`ncclConfig_t::blocking = 0`), so
//! no NCCL call waits for a peer. A collective enqueues its NCCL calls in one group, polls
//! `ncclCommGetAsyncError` until NCCL has set them up, records an event after them on the
//! stream and polls it until the device has finished. Past the deadline, or when NCCL reports
//! an asynchronous error, the communicator is aborted (`ncclCommAbort`, which also stops the
//! device kernels still waiting for a peer) and the call returns `MoeError::Comm`; every later
//! collective of the group fails at once with the same error. Every collective, host tensors
//! or not, returns only after the device finished it: the NCCL exchange counts need host
//! values anyway, and a collective that may time out must be observed to its end.
//!
//! **Data plane.** A non-blocking communicator makes every `ncclGroupEnd` start a thread that
//! launches the group and returns `ncclInProgress`, which costs each collective a thread start
//! and a hand-off before the device even sees it. So at init (unless `MOE_NCCL_DATA_PLANE` is
//! `nonblocking`) a second, blocking communicator is created from a fresh unique id sent over
//! the first, and its connections are made right away by one send/recv with every peer, one
//! all-gather and one broadcast (the only NCCL calls the collectives use). This happens on a
//! helper thread while the caller waits against the init deadline, watching for exited peers
//! (at the deadline the helper stays blocked in NCCL and the group fails). Collectives then
//! run on this data plane: with every connection made, a blocking `ncclGroupEnd` only queues
//! kernels on the stream and never waits for a peer, so the deadline still holds where peers
//! matter, in the completion wait: the event is polled against the deadline with the liveness
//! probe, and an abort (of both communicators) stops the kernels still waiting for a peer.
//! `set_blocking_data_plane(false)` switches back to the non-blocking communicator (the
//! benchmark measures both in one run).
//!
//! **Naming the peer.** Ranks bootstrapped from a unique-id file keep a liveness file each
//! (`<id file>.rank<r>`: process id and the number of the collective the rank last entered).
//! While waiting, a rank looks every 200 ms for a peer whose process has exited and
//! fails at once naming it; at the deadline it names a peer that has not entered this
//! collective. Without liveness files (bootstrap over another process group) the peer is
//! named in a world of two and left `None` otherwise, with the collective and the ranks in
//! the detail.
//!
//! **Bootstrap.** [`NcclGroup::from_unique_id_file`]: rank 0 creates the unique id and writes
//! it atomically (temporary file, then rename); the others poll for the file until the
//! deadline. [`NcclGroup::from_group`] broadcasts the id over a host process group (with the
//! `mpi` feature, `NcclGroup::from_mpi` does so over MPI).
//!
//! **Host tensors** are accepted: they are uploaded to the group's device, exchanged and
//! downloaded, so the result is a host tensor again (the all-to-all strategy exchanges its
//! host-side counts this way). Device tensors must live on the group's device.
//!
//! **Local blocks.** `all_to_all_v` copies the rank's own block with a device-to-device copy on
//! a second stream of the device, concurrently with the NCCL transfer of the peers' blocks,
//! instead of sending it to itself through NCCL; the completion event follows both.
//! `reduce_scatter_v` moves no own block at all: its sum reads it where it lies
//! (`sum_blocks_with`).
//!
//! **Memory.** Joining a group sets the release threshold of the device's default memory pool
//! (the pool cudarc's stream-ordered allocations come from) to unlimited: freed buffers stay
//! with the process for the next allocation instead of going back to the driver at every
//! synchronisation, which would map (and clear) the exchange buffers again on every call.
//!
//! **Sums** (`reduce_scatter_v`, `all_reduce_sum`) move the blocks with send/recv and add them
//! on the device in f32 in rank order, like the host groups, so every rank and every group
//! kind computes bit-identical sums.
//!
//! **Files.** `bootstrap.rs` (sharing the unique id: a file or a host process group),
//! `lifecycle.rs` (joining: the communicator's init; leaving: `Drop`), `data_plane.rs` (the
//! blocking second communicator), `liveness.rs` (the liveness files), `completion.rs` (waiting
//! against the deadline, failing and aborting), `launch.rs` (queueing one collective's NCCL
//! calls and local copies, operands and buffers), `process_group.rs` (the collectives of
//! `ProcessGroup`), `ffi.rs` (every `unsafe` call).

mod bootstrap;
mod completion;
mod data_plane;
mod ffi;
mod launch;
mod lifecycle;
mod liveness;
mod process_group;

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::sys;
use moe_core::MoeError;
use moe_kernels::cuda::CudaDevice;

use ffi::RawComm;
use liveness::Liveness;

struct Inner {
    /// The non-blocking communicator: bootstrap, and every collective when there is no data
    /// plane (or it is switched off).
    comm: RawComm,
    /// The blocking data-plane communicator (null when absent): its connections are made at
    /// init, so its `ncclGroupEnd` only queues kernels and never waits for a peer (see the
    /// module docs, **Data plane**).
    data: RawComm,
    /// Whether collectives run on `data` (only when it is not null).
    use_data: bool,
    /// Collectives entered so far; errors and liveness files name them by this number.
    seq: u64,
    /// Why the communicator was aborted: every later collective fails with it at once.
    broken: Option<String>,
    /// Recorded after each collective's NCCL calls; polled for completion.
    done: CudaEvent,
    /// A second stream of the device for a collective's local part (the rank's own block of
    /// an all-to-all), copied while NCCL moves the peers' blocks; joined back through `fork`
    /// and `joined` before the completion event.
    side: Arc<CudaStream>,
    fork: CudaEvent,
    joined: CudaEvent,
}

impl Inner {
    /// The communicator collectives run on now, and whether it is the blocking data plane.
    fn active(&self) -> (sys::ncclComm_t, bool) {
        if self.use_data && !self.data.0.is_null() {
            (self.data.0, true)
        } else {
            (self.comm.0, false)
        }
    }
}

/// The NCCL communicator of one rank, as a process group over device tensors.
pub struct NcclGroup {
    rank: usize,
    size: usize,
    dev: CudaDevice,
    inner: Mutex<Inner>,
    liveness: Option<Liveness>,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("device", &self.dev)
            .finish()
    }
}

fn comm_err(peer: Option<usize>, detail: impl Into<String>) -> MoeError {
    MoeError::Comm {
        peer,
        detail: detail.into(),
    }
}

impl NcclGroup {
    /// The GPU this rank's communicator runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
