//! Joining and leaving the world: [`NcclGroup`]'s init once the unique id is shared (the
//! device's events and side stream, the memory pool, the non-blocking communicator, then the
//! data plane), and `Drop`, which finalizes the communicator with a bounded wait and aborts it
//! when that does not finish.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cudarc::nccl::{result as nccl, sys};
use moe_core::{Deadline, Result};
use moe_kernels::cuda::CudaDevice;

use super::data_plane::data_plane_wanted;
use super::ffi::{self, RawComm, async_state, keep_pool_memory, load_nccl};
use super::liveness::Liveness;
use super::{Inner, NcclGroup, comm_err};

/// How long dropping a group waits for `ncclCommFinalize` before aborting instead.
const FINALIZE_WAIT: Duration = Duration::from_secs(5);

impl NcclGroup {
    pub(super) fn init(
        id: sys::ncclUniqueId,
        rank: usize,
        world: usize,
        device_ordinal: usize,
        deadline: Deadline,
        liveness: Option<Liveness>,
    ) -> Result<NcclGroup> {
        let dev = CudaDevice::new(device_ordinal)?;
        let stream = dev.stream().clone();
        let ctx = stream.context().clone();
        ctx.bind_to_thread()
            .map_err(|e| comm_err(None, format!("{}: binding the context: {e}", dev.location())))?;
        let event = || {
            ctx.new_event(None)
                .map_err(|e| comm_err(None, format!("{}: creating an event: {e}", dev.location())))
        };
        let (done, fork, joined) = (event()?, event()?, event()?);
        let side = stream
            .fork()
            .map_err(|e| comm_err(None, format!("{}: creating the side stream: {e}", dev.location())))?;
        keep_pool_memory(&ctx, &dev.location())?;
        let version = load_nccl("reading the NCCL version", nccl::get_nccl_version)?;
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let started = load_nccl("creating the NCCL communicator", || {
            let (handle, r) = ffi::comm_init(id, rank, world, version, false);
            raw = handle;
            r
        });
        let group = NcclGroup {
            rank,
            size: world,
            dev,
            inner: Mutex::new(Inner {
                comm: RawComm(raw),
                data: RawComm::null(),
                use_data: false,
                seq: 0,
                broken: None,
                done,
                side,
                fork,
                joined,
            }),
            liveness,
        };
        if let Err(e) = started {
            let mut inner = group.lock();
            return Err(group.fail(&mut inner, "communicator init", e.to_string(), None));
        }
        let mut inner = group.lock();
        group.wait(&mut inner, "communicator init", deadline, false)?;
        drop(inner);
        if world > 1 && data_plane_wanted() {
            group.start_data_plane(version, deadline)?;
        }
        tracing::debug!(
            rank,
            world,
            device = device_ordinal,
            nccl = version,
            "NCCL communicator ready"
        );
        Ok(group)
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if !inner.data.0.is_null() {
            let _ = self.dev.stream().context().bind_to_thread();
            // Every collective on it completed (or the group was aborted, which nulled it), so
            // the abort only frees it, without waiting for a peer as a blocking destroy might.
            ffi::comm_abort(&mut inner.data);
        }
        if inner.comm.0.is_null() {
            return;
        }
        let _ = self.dev.stream().context().bind_to_thread();
        // Finalize flushes the communicator's work without blocking (non-blocking
        // communicator) and is polled here; one that does not finish in time is aborted.
        let comm = inner.comm.0;
        let finalized = ffi::comm_finalize(comm) && {
            let until = Instant::now() + FINALIZE_WAIT;
            loop {
                match async_state(comm) {
                    Ok(true) => break true,
                    Ok(false) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                    _ => break false,
                }
            }
        };
        if finalized {
            ffi::comm_destroy(&mut inner.comm);
        } else {
            ffi::comm_abort(&mut inner.comm);
        }
    }
}
