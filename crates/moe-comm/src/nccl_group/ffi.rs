//! Every `unsafe` call of the NCCL group, in one file to audit: the communicator handle and its
//! init, abort, finalize and destroy, the NCCL calls a collective queues ([`Op`]), the device
//! copies of a collective's own block ([`LocalCopy`]), NCCL's error queries, the config struct
//! sized to the running NCCL, and the CUDA memory-pool attribute set at join. The rest of the
//! group is safe code over these wrappers.
//!
//! The wrappers take raw `ncclComm_t` handles, as NCCL does; their callers keep the handle's
//! rules: a handle is live (not aborted or destroyed) and used only under the group's mutex,
//! or by its last owner in `Drop`.

use std::ffi::{CStr, c_int, c_void};
use std::sync::Arc;

use cudarc::driver::{CudaStream, DriverError};
use cudarc::nccl::{result as nccl, sys};
use moe_core::Result;

use super::comm_err;

/// `NCCL_CONFIG_UNDEF_INT`: NCCL's default for a config field.
const UNDEF: c_int = c_int::MIN;

/// The raw communicator handle (null once aborted or destroyed).
pub(super) struct RawComm(pub(super) sys::ncclComm_t);

// SAFETY: an NCCL communicator may be driven from any thread as long as calls on it never
// overlap; the handle lives only inside `NcclGroup::inner`, whose mutex serialises every call.
unsafe impl Send for RawComm {}

impl RawComm {
    pub(super) fn null() -> RawComm {
        RawComm(std::ptr::null_mut())
    }
}

/// Creates the communicator of `rank` in a world of `world` from `id`, blocking or not (see the
/// module docs of `nccl_group`). Returns the handle NCCL wrote (null when it wrote none) with
/// the call's result: a non-blocking init may return before it completes, and a failed one
/// still leaves a handle to abort.
pub(super) fn comm_init(
    id: sys::ncclUniqueId,
    rank: usize,
    world: usize,
    version: c_int,
    blocking: bool,
) -> (sys::ncclComm_t, std::result::Result<(), nccl::NcclError>) {
    let mut config = nonblocking_config(version);
    config.blocking = c_int::from(blocking);
    let mut raw: sys::ncclComm_t = std::ptr::null_mut();
    // SAFETY: `raw` and `config` are valid for the call (NCCL copies the config and writes the
    // handle); `config` is initialised as NCCL_CONFIG_INITIALIZER would, with `size` limited to
    // the fields this NCCL version knows.
    let r = unsafe { nccl::comm_init_rank_config(&mut raw, world as c_int, id, rank as c_int, &mut config) };
    (raw, r.map(|_| ()))
}

/// Aborts `comm` (a no-op on null) and nulls it: NCCL stops its kernels still waiting for a
/// peer and frees it, so the handle is never used again.
pub(super) fn comm_abort(comm: &mut RawComm) {
    if comm.0.is_null() {
        return;
    }
    // SAFETY: the handle is live and its only user holds it mutably (under the group's mutex,
    // or in `Drop`); it is nulled right after, so nothing uses it again.
    let _ = unsafe { nccl::comm_abort(comm.0) };
    comm.0 = std::ptr::null_mut();
}

/// Starts `ncclCommFinalize` on a live non-blocking `comm` (its completion is polled with
/// [`async_state`]); `false` when NCCL refused it.
pub(super) fn comm_finalize(comm: sys::ncclComm_t) -> bool {
    // SAFETY: the caller (`Drop`) is the handle's last user and it is live; finalize flushes its
    // work without blocking (non-blocking communicator).
    unsafe { nccl::comm_finalize(comm) }.is_ok()
}

/// Frees a `comm` that [`comm_finalize`] finished, and nulls it.
pub(super) fn comm_destroy(comm: &mut RawComm) {
    // SAFETY: as for `comm_finalize`; the handle is nulled right after, so nothing uses it
    // again.
    let _ = unsafe { nccl::comm_destroy(comm.0) };
    comm.0 = std::ptr::null_mut();
}

/// One NCCL call of a collective. Addresses are device addresses inside live buffers of the
/// group's device, `bytes` long (checked by the collective that builds the list).
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Send {
        ptr: u64,
        bytes: usize,
        peer: usize,
    },
    Recv {
        ptr: u64,
        bytes: usize,
        peer: usize,
    },
    Broadcast {
        send: u64,
        recv: u64,
        bytes: usize,
        root: usize,
    },
    AllGather {
        send: u64,
        recv: u64,
        bytes: usize,
    },
}

impl Op {
    /// The send of `send = (address, bytes)` to `peer` and the receive of `recv` from it: one
    /// peer's share of a pairwise exchange.
    pub(super) fn swap(peer: usize, send: (u64, usize), recv: (u64, usize)) -> [Op; 2] {
        [
            Op::Send {
                ptr: send.0,
                bytes: send.1,
                peer,
            },
            Op::Recv {
                ptr: recv.0,
                bytes: recv.1,
                peer,
            },
        ]
    }

    pub(super) fn bytes(&self) -> usize {
        match *self {
            Op::Send { bytes, .. } | Op::Recv { bytes, .. } => bytes,
            Op::Broadcast { bytes, .. } | Op::AllGather { bytes, .. } => bytes,
        }
    }
}

/// A device-to-device copy of a collective's own block (no NCCL involved).
#[derive(Clone, Copy, Debug)]
pub(super) struct LocalCopy {
    pub(super) dst: u64,
    pub(super) src: u64,
    pub(super) bytes: usize,
}

/// NCCL's message for the last error of `comm` (or of this thread's last call).
pub(super) fn last_error(comm: sys::ncclComm_t) -> String {
    // SAFETY: ncclGetLastError accepts any handle or null and returns null or a NUL-terminated
    // string owned by NCCL, valid until the next NCCL call; it is copied before returning.
    unsafe {
        let p = sys::ncclGetLastError(comm);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// `Ok(true)` when the communicator is idle, `Ok(false)` while NCCL is still setting up an
/// operation (non-blocking mode), `Err` with NCCL's message when it failed.
pub(super) fn async_state(comm: sys::ncclComm_t) -> std::result::Result<bool, String> {
    let mut state = sys::ncclResult_t::ncclSuccess;
    // SAFETY: `comm` is a live handle (callers hold the group's mutex and never pass an aborted
    // one) and `state` is valid for the write.
    let r = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
    if r != sys::ncclResult_t::ncclSuccess {
        return Err(format!("ncclCommGetAsyncError failed ({r:?})"));
    }
    match state {
        sys::ncclResult_t::ncclSuccess => Ok(true),
        sys::ncclResult_t::ncclInProgress => Ok(false),
        e => Err(format!("NCCL reported {e:?}: {}", last_error(comm))),
    }
}

/// Queues one NCCL call on `stream`.
pub(super) fn issue(
    comm: sys::ncclComm_t,
    stream: sys::cudaStream_t,
    op: &Op,
) -> std::result::Result<nccl::NcclStatus, nccl::NcclError> {
    let u8t = sys::ncclDataType_t::ncclUint8;
    let cast = |v: usize| v as c_int;
    // SAFETY: `comm` is live and used under the group's mutex; every address lies in a device
    // buffer of the communicator's device that holds `bytes` bytes from it and outlives the
    // collective (the caller keeps it until the collective completed on the device, or until
    // the communicator is aborted and its kernels have left the stream; buffers are freed in
    // stream order behind them in any case); peers and roots are ranks of the communicator.
    unsafe {
        match *op {
            Op::Send { ptr, bytes, peer } => nccl::send(ptr as *const c_void, bytes, u8t, cast(peer), comm, stream),
            Op::Recv { ptr, bytes, peer } => nccl::recv(ptr as *mut c_void, bytes, u8t, cast(peer), comm, stream),
            Op::Broadcast {
                send,
                recv,
                bytes,
                root,
            } => nccl::broadcast(
                send as *const c_void,
                recv as *mut c_void,
                bytes,
                u8t,
                cast(root),
                comm,
                stream,
            ),
            Op::AllGather { send, recv, bytes } => {
                nccl::all_gather(send as *const c_void, recv as *mut c_void, bytes, u8t, comm, stream)
            }
        }
    }
}

/// Queues `copies` on `side` (device-to-device, async).
pub(super) fn copy_blocks_async(copies: &[&LocalCopy], side: &CudaStream) -> std::result::Result<(), DriverError> {
    for c in copies {
        // SAFETY: both ranges are `bytes` long inside live device buffers of this context (the
        // caller's operand and the collective's output, checked by the collective that built the
        // copy); the copy is ordered after their producers (the group records `fork` on the
        // device's stream first), and the device's stream (on which the buffers are freed) waits
        // for the side stream before anything later.
        unsafe { cudarc::driver::result::memcpy_dtod_async(c.dst, c.src, c.bytes, side.cu_stream()) }?;
    }
    Ok(())
}

/// A config asking for a non-blocking communicator, every other field left to NCCL. `size`
/// covers only the fields the running NCCL (`version`, as `ncclGetVersion` reports it) knows;
/// NCCL fills the rest with its defaults.
fn nonblocking_config(version: c_int) -> sys::ncclConfig_t {
    use std::mem::offset_of;
    let size = match version {
        v if v >= 23000 => size_of::<sys::ncclConfig_t>(),
        v if v >= 22900 => offset_of!(sys::ncclConfig_t, maxP2pPeers),
        v if v >= 22800 => offset_of!(sys::ncclConfig_t, graphUsageMode),
        v if v >= 22700 => offset_of!(sys::ncclConfig_t, nChannelsPerNetPeer),
        v if v >= 22600 => offset_of!(sys::ncclConfig_t, commName),
        _ => offset_of!(sys::ncclConfig_t, trafficClass),
    };
    sys::ncclConfig_t {
        size,
        magic: 0xcafe_beef,
        version: version as u32,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
        graphUsageMode: UNDEF,
        numRmaCtx: UNDEF,
        maxP2pPeers: UNDEF,
    }
}

/// Sets the release threshold of the device's default memory pool to unlimited (see the
/// module docs, **Memory**).
pub(super) fn keep_pool_memory(ctx: &Arc<cudarc::driver::CudaContext>, location: &str) -> Result<()> {
    use cudarc::driver::{result::mem_pool, sys as cu};
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: cu::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: `pool` is valid for the write of the handle, the device is this context's, and
    // the release threshold attribute takes a pointer to a u64 (`threshold`, alive for the call).
    let r = unsafe {
        cu::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .and_then(|()| {
                mem_pool::set_attribute(
                    pool,
                    cu::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                )
            })
    };
    r.map_err(|e| comm_err(None, format!("{location}: keeping freed memory in the pool: {e}")))
}

/// Runs a first NCCL call, turning a missing library (cudarc panics when it cannot open
/// libnccl) into a typed error.
pub(super) fn load_nccl<T>(step: &str, f: impl FnOnce() -> std::result::Result<T, nccl::NcclError>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(comm_err(
            None,
            format!("{step}: NCCL error {:?}: {}", e.0, last_error(std::ptr::null_mut())),
        )),
        Err(_) => Err(comm_err(
            None,
            format!("{step}: the NCCL library could not be loaded (is libnccl on LD_LIBRARY_PATH?)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_size_covers_only_the_fields_the_running_nccl_knows() {
        let full = size_of::<sys::ncclConfig_t>();
        assert_eq!(nonblocking_config(23001).size, full);
        assert!(nonblocking_config(22803).size < full);
        assert!(nonblocking_config(22700).size < nonblocking_config(22803).size);
        let c = nonblocking_config(22803);
        assert_eq!(
            (c.magic, c.version, c.blocking, c.minCTAs),
            (0xcafe_beef, 22803, 0, UNDEF)
        );
    }
}
