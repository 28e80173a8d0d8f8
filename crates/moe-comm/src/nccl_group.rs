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

use std::ffi::{CStr, c_int, c_void};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rows::{check_counts, check_gather_input, check_split_rows};
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{result as nccl, sys};
use moe_core::{DType, Deadline, HostStorage, MoeError, ProcessGroup, Result, Storage, Tensor};
use moe_kernels::cuda::{CudaDevice, CudaStorage, OwnBlock, download, sum_blocks, sum_blocks_with};

/// How often a waiting rank looks for peers whose process has exited.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long an abort waits for the aborted kernels to leave the stream.
const DRAIN_AFTER_ABORT: Duration = Duration::from_secs(10);
/// How long dropping a group waits for `ncclCommFinalize` before aborting instead.
const FINALIZE_WAIT: Duration = Duration::from_secs(5);
/// `NCCL_CONFIG_UNDEF_INT`: NCCL's default for a config field.
const UNDEF: c_int = c_int::MIN;
/// Bytes of an `ncclUniqueId`.
const ID_BYTES: usize = 128;
/// First word of a unique-id file whose rank 0 failed to create the id.
const FAILED: &str = "error:";

/// The raw communicator handle (null once aborted or destroyed).
struct RawComm(sys::ncclComm_t);

// SAFETY: an NCCL communicator may be driven from any thread as long as calls on it never
// overlap; the handle lives only inside `NcclGroup::inner`, whose mutex serialises every call.
unsafe impl Send for RawComm {}

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

/// Environment variable choosing the data plane: `nonblocking` runs every collective on the
/// non-blocking communicator (no second communicator is created); anything else (default)
/// creates the blocking data-plane communicator at init and runs collectives on it.
pub const DATA_PLANE_ENV: &str = "MOE_NCCL_DATA_PLANE";

fn data_plane_wanted() -> bool {
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
    let mut config = nonblocking_config(version);
    config.blocking = 1;
    let mut raw: sys::ncclComm_t = std::ptr::null_mut();
    // SAFETY: `raw` and `config` are valid for the call (NCCL copies the config and writes the
    // handle); `config` is initialised as NCCL_CONFIG_INITIALIZER would, blocking.
    unsafe { nccl::comm_init_rank_config(&mut raw, world as c_int, id, rank as c_int, &mut config) }
        .map_err(|e| format!("creating the data-plane communicator: {:?} {}", e.0, last_error(raw)))?;
    let comm = RawComm(raw);
    let stream = stream as sys::cudaStream_t;
    let w = WARM_BYTES as u64;
    let mut p2p = Vec::new();
    for peer in (0..world).filter(|&q| q != rank) {
        p2p.push(Op::Send {
            ptr: buf,
            bytes: WARM_BYTES,
            peer,
        });
        p2p.push(Op::Recv {
            ptr: buf + w * (1 + peer as u64),
            bytes: WARM_BYTES,
            peer,
        });
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
            // SAFETY: the handle is live and owned by this function; never used again.
            let _ = unsafe { nccl::comm_abort(comm.0) };
            return Err(why);
        }
    }
    Ok(comm)
}

/// A device-to-device copy of a collective's own block (no NCCL involved).
#[derive(Clone, Copy, Debug)]
struct LocalCopy {
    dst: u64,
    src: u64,
    bytes: usize,
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

/// One NCCL call of a collective. Addresses are device addresses inside live buffers of the
/// group's device, `bytes` long (checked by the collective that builds the list).
#[derive(Clone, Copy, Debug)]
enum Op {
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
    fn bytes(&self) -> usize {
        match *self {
            Op::Send { bytes, .. } | Op::Recv { bytes, .. } => bytes,
            Op::Broadcast { bytes, .. } | Op::AllGather { bytes, .. } => bytes,
        }
    }
}

/// NCCL's message for the last error of `comm` (or of this thread's last call).
fn last_error(comm: sys::ncclComm_t) -> String {
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
fn async_state(comm: sys::ncclComm_t) -> std::result::Result<bool, String> {
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
fn issue(
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
fn keep_pool_memory(ctx: &Arc<cudarc::driver::CudaContext>, location: &str) -> Result<()> {
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
fn load_nccl<T>(step: &str, f: impl FnOnce() -> std::result::Result<T, nccl::NcclError>) -> Result<T> {
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

/// A new NCCL unique id (rank 0 of a bootstrap creates it and shares it with the others).
fn new_unique_id() -> Result<[u8; ID_BYTES]> {
    let id = load_nccl("creating the NCCL unique id", nccl::get_uniqueid)?;
    Ok(id.internal.map(|c| c as u8))
}

/// A unique id created by rank 0 of `group` and gathered by every rank over it (`what` names
/// it in the error a malformed id gets).
fn shared_unique_id(group: &dyn ProcessGroup, what: &str, deadline: Deadline) -> Result<sys::ncclUniqueId> {
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

/// Appends `suffix` to a path's file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
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
struct Liveness {
    base: PathBuf,
    rank: usize,
    world: usize,
    file: fs::File,
}

impl Liveness {
    fn path(base: &Path, rank: usize) -> PathBuf {
        with_suffix(base, &format!(".rank{rank}"))
    }

    fn create(base: &Path, rank: usize, world: usize) -> Result<Liveness> {
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
    fn enter(&self, seq: u64) {
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
    fn dead_peer(&self) -> Option<(usize, String)> {
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
    fn diagnose(&self, seq: u64) -> Option<(usize, String)> {
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

/// Bytes of one row of `t`.
fn row_bytes(t: &Tensor) -> usize {
    t.row_len() * t.dtype().size_in_bytes()
}

/// `t`'s shape with `rows` leading rows.
fn with_rows(t: &Tensor, rows: usize) -> Vec<usize> {
    let mut shape = t.shape().to_vec();
    match shape.first_mut() {
        Some(first) => *first = rows,
        None => shape.push(rows),
    }
    shape
}

fn check_float(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype().is_float_activation() {
        Ok(())
    } else {
        Err(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "f32, bf16 or f16".into(),
            actual: t.dtype().to_string(),
        })
    }
}

/// Row offsets (in rows) of consecutive blocks of `counts` rows.
fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let o = *acc;
            *acc += c;
            Some(o)
        })
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

    fn init(
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
        let mut config = nonblocking_config(version);
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let (n, r) = (world as c_int, rank as c_int);
        // SAFETY: `raw` and `config` are valid for the call (NCCL copies the config and writes
        // the handle); `config` is initialised as NCCL_CONFIG_INITIALIZER would, with `size`
        // limited to the fields this NCCL version knows.
        let started = load_nccl("creating the NCCL communicator", || unsafe {
            nccl::comm_init_rank_config(&mut raw, n, id, r, &mut config)
        });
        let group = NcclGroup {
            rank,
            size: world,
            dev,
            inner: Mutex::new(Inner {
                comm: RawComm(raw),
                data: RawComm(std::ptr::null_mut()),
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

    /// The GPU this rank's communicator runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

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
    fn start_data_plane(&self, version: c_int, deadline: Deadline) -> Result<()> {
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer to blame for collective `seq`, and why.
    fn attribute(&self, seq: u64) -> Option<(usize, String)> {
        match &self.liveness {
            Some(l) => l.diagnose(seq),
            None if self.size == 2 => Some((1 - self.rank, format!("rank {} is the only peer", 1 - self.rank))),
            None => None,
        }
    }

    /// Aborts the communicator and waits a bounded time for its kernels to leave the stream;
    /// returns a note when they did not.
    fn abort(&self, inner: &mut Inner) -> String {
        if !inner.data.0.is_null() {
            // SAFETY: as below, for the data-plane handle.
            let _ = unsafe { nccl::comm_abort(inner.data.0) };
            inner.data.0 = std::ptr::null_mut();
        }
        if inner.comm.0.is_null() {
            return String::new();
        }
        // SAFETY: the handle is live and used only under the mutex this thread holds; it is
        // nulled right after, so nothing uses it again.
        let _ = unsafe { nccl::comm_abort(inner.comm.0) };
        inner.comm.0 = std::ptr::null_mut();
        if let Err(e) = inner.done.record(self.dev.stream()) {
            return format!("; recording an event after the abort failed: {e}");
        }
        let until = Instant::now() + DRAIN_AFTER_ABORT;
        loop {
            match inner.done.try_is_complete() {
                Ok(true) => return String::new(),
                Ok(false) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                Ok(false) => return "; the device stream was still busy after the abort".into(),
                Err(e) => return format!("; device error after the abort: {e}"),
            }
        }
    }

    /// Aborts the communicator and builds the error of collective `what`.
    fn fail(&self, inner: &mut Inner, what: &str, why: String, known: Option<(usize, String)>) -> MoeError {
        let blame = known.or_else(|| self.attribute(inner.seq));
        let note = self.abort(inner);
        let who = match &blame {
            Some((_, w)) => w.clone(),
            None => format!("no peer identified among ranks 0..{}", self.size),
        };
        let detail = format!(
            "NCCL {what} (collective #{} of rank {} in ranks 0..{}, {}): {why}; {who}; communicator aborted{note}",
            inner.seq,
            self.rank,
            self.size,
            self.dev.location()
        );
        inner.broken = Some(detail.clone());
        comm_err(blame.map(|(p, _)| p), detail)
    }

    /// Polls until NCCL has set up the queued work, then (when `on_device`) until the device
    /// has finished it; fails at the deadline, on an NCCL error or on a peer's exit.
    fn wait(&self, inner: &mut Inner, what: &str, deadline: Deadline, on_device: bool) -> Result<()> {
        let mut probe = Instant::now();
        let mut recorded = false;
        let (comm, _) = inner.active();
        loop {
            match async_state(comm) {
                Err(why) => return Err(self.fail(inner, what, why, None)),
                Ok(false) => {}
                Ok(true) if !on_device => return Ok(()),
                Ok(true) if !recorded => {
                    if let Err(e) = inner.done.record(self.dev.stream()) {
                        return Err(self.fail(inner, what, format!("recording the completion event: {e}"), None));
                    }
                    recorded = true;
                    continue;
                }
                Ok(true) => match inner.done.try_is_complete() {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(self.fail(inner, what, format!("device error: {e}"), None)),
                },
            }
            if deadline.expired() {
                return Err(self.fail(inner, what, "not complete at the deadline".into(), None));
            }
            if probe.elapsed() >= PROBE_EVERY {
                probe = Instant::now();
                if let Some(dead) = self.liveness.as_ref().and_then(Liveness::dead_peer) {
                    return Err(self.fail(inner, what, "a peer exited".into(), Some(dead)));
                }
            }
            std::thread::yield_now();
        }
    }

    /// Runs `ops` as one NCCL group on the device's stream, with the `local` blocks copied on
    /// the side stream meanwhile, and waits for both.
    fn run(&self, what: &str, ops: &[Op], local: &[LocalCopy], deadline: Deadline) -> Result<()> {
        let mut inner = self.lock();
        if let Some(why) = &inner.broken {
            return Err(comm_err(
                None,
                format!("NCCL {what}: the communicator was aborted earlier: {why}"),
            ));
        }
        inner.seq += 1;
        if let Some(l) = &self.liveness {
            l.enter(inner.seq);
        }
        let ops: Vec<&Op> = ops.iter().filter(|o| o.bytes() > 0).collect();
        let local: Vec<&LocalCopy> = local.iter().filter(|c| c.bytes > 0).collect();
        if ops.is_empty() && local.is_empty() {
            return Ok(());
        }
        let stream = self.dev.stream();
        if let Err(e) = stream.context().bind_to_thread() {
            return Err(self.fail(&mut inner, what, format!("binding the context: {e}"), None));
        }
        if !local.is_empty()
            && let Err(e) = self.copy_local(&inner, &local)
        {
            return Err(self.fail(&mut inner, what, format!("copying the local block: {e}"), None));
        }
        if ops.is_empty() {
            if let Err(e) = stream.wait(&inner.joined) {
                return Err(self.fail(&mut inner, what, format!("joining the side stream: {e}"), None));
            }
            return self.wait(&mut inner, what, deadline, true);
        }
        let cu_stream = stream.cu_stream() as sys::cudaStream_t;
        let (comm, _) = inner.active();
        let mut issued = nccl::group_start()
            .map(|_| ())
            .map_err(|e| format!("ncclGroupStart: {:?}", e.0));
        if issued.is_ok() {
            for op in &ops {
                if let Err(e) = issue(comm, cu_stream, op) {
                    issued = Err(format!("queueing {op:?}: {:?} {}", e.0, last_error(comm)));
                    break;
                }
            }
            // The group is closed whatever happened inside it.
            if let Err(e) = nccl::group_end() {
                issued = issued.and(Err(format!("ncclGroupEnd: {:?} {}", e.0, last_error(comm))));
            }
        }
        if let Err(why) = issued {
            return Err(self.fail(&mut inner, what, why, None));
        }
        if !local.is_empty()
            && let Err(e) = stream.wait(&inner.joined)
        {
            return Err(self.fail(&mut inner, what, format!("joining the side stream: {e}"), None));
        }
        self.wait(&mut inner, what, deadline, true)
    }

    /// Queues the copies on the side stream after everything queued so far on the device's
    /// stream, and records `joined` after them (the caller makes the device's stream wait for it).
    fn copy_local(&self, inner: &Inner, copies: &[&LocalCopy]) -> std::result::Result<(), cudarc::driver::DriverError> {
        let stream = self.dev.stream();
        inner.fork.record(stream)?;
        inner.side.wait(&inner.fork)?;
        for c in copies {
            // SAFETY: both ranges are `bytes` long inside live device buffers of this context
            // (the caller's operand and the collective's output, checked by the collective that
            // built the copy); the copy is ordered after their producers by `fork`, and the
            // device's stream (on which the buffers are freed) waits for `joined` before
            // anything later.
            unsafe { cudarc::driver::result::memcpy_dtod_async(c.dst, c.src, c.bytes, inner.side.cu_stream()) }?;
        }
        if let Err(e) = inner.joined.record(&inner.side) {
            // The device's stream must not run past the copy: make it wait for the whole side
            // stream instead.
            stream.join(&inner.side)?;
            return Err(e);
        }
        Ok(())
    }

    /// `t` on this group's device: uploaded when it is a host tensor.
    fn operand(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        match t.storage() {
            Storage::Host(_) => self.dev.upload(t),
            Storage::Device(_) => {
                let s = CudaStorage::of(t, what)?;
                if s.device().ordinal() != self.dev.ordinal() {
                    return Err(MoeError::Backend(
                        format!(
                            "{what} lives on {}, but this rank's NCCL communicator runs on {}",
                            s.device().location(),
                            self.dev.location()
                        )
                        .into(),
                    ));
                }
                Ok(t.clone())
            }
        }
    }

    /// Device address of a device tensor's buffer.
    fn addr(&self, t: &Tensor) -> Result<u64> {
        let s = CudaStorage::of(t, "NCCL operand")?;
        let (p, _sync) = s.bytes().device_ptr(self.dev.stream());
        Ok(p)
    }

    /// A fresh device buffer of `bytes` bytes and its address.
    fn buffer(&self, bytes: usize) -> Result<(CudaStorage, u64)> {
        let mut s = self.dev.alloc_storage(bytes)?;
        let p = {
            let (p, _sync) = s.bytes_mut().device_ptr_mut(self.dev.stream());
            p
        };
        Ok((s, p))
    }

    /// The result in the caller's storage kind: downloaded when the input was a host tensor.
    fn finish(t: Tensor, host: bool) -> Result<Tensor> {
        if host { download(&t) } else { Ok(t) }
    }

    /// Gathers `counts[r]` bytes from every rank r (`send` on this rank) into `recv`, rank order.
    fn gather_ops(&self, send: u64, recv: u64, counts: &[usize]) -> Vec<Op> {
        if counts.iter().all(|&c| c == counts[0]) {
            return vec![Op::AllGather {
                send,
                recv,
                bytes: counts[0],
            }];
        }
        let mut at = 0u64;
        counts
            .iter()
            .enumerate()
            .map(|(root, &bytes)| {
                let dst = recv + at;
                at += bytes as u64;
                Op::Broadcast {
                    send: if root == self.rank { send } else { dst },
                    recv: dst,
                    bytes,
                    root,
                }
            })
            .collect()
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if !inner.data.0.is_null() {
            let _ = self.dev.stream().context().bind_to_thread();
            // SAFETY: the handle is live and this is its last user (`&mut self`). Every
            // collective on it completed (or the group was aborted, which nulled it), so the
            // abort only frees it, without waiting for a peer as a blocking destroy might.
            let _ = unsafe { nccl::comm_abort(inner.data.0) };
            inner.data.0 = std::ptr::null_mut();
        }
        let comm = inner.comm.0;
        if comm.is_null() {
            return;
        }
        inner.comm.0 = std::ptr::null_mut();
        let _ = self.dev.stream().context().bind_to_thread();
        // SAFETY: the handle is live and this is its last user (`&mut self`); finalize flushes
        // its work without blocking (non-blocking communicator) and is polled below.
        let finalized = unsafe { nccl::comm_finalize(comm) }.is_ok() && {
            let until = Instant::now() + FINALIZE_WAIT;
            loop {
                match async_state(comm) {
                    Ok(true) => break true,
                    Ok(false) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                    _ => break false,
                }
            }
        };
        // SAFETY: as above; after this call the handle is never used again.
        let _ = unsafe {
            if finalized {
                nccl::comm_destroy(comm)
            } else {
                nccl::comm_abort(comm)
            }
        };
    }
}

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        "nccl"
    }

    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        let mut out = self.all_gather_v_many(&[local], counts, deadline)?;
        out.pop()
            .ok_or_else(|| MoeError::lifecycle("NCCL all_gather_v: no output"))
    }

    /// Every tensor's gather in one NCCL group: one launch and one completion wait for all.
    fn all_gather_v_many(&self, locals: &[&Tensor], counts: &[usize], deadline: Deadline) -> Result<Vec<Tensor>> {
        let total: usize = counts.iter().sum();
        let mut ops = Vec::new();
        let mut outs = Vec::with_capacity(locals.len());
        for local in locals {
            check_gather_input(local, counts, self.rank, self.size())?;
            let host = local.is_host();
            let local = self.operand(local, "all_gather_v input")?;
            let rb = row_bytes(&local);
            let (out, recv) = self.buffer(total * rb)?;
            let byte_counts: Vec<usize> = counts.iter().map(|c| c * rb).collect();
            ops.extend(self.gather_ops(self.addr(&local)?, recv, &byte_counts));
            // The operand (an upload of a host tensor) lives until the collective has finished.
            outs.push((
                self.dev.tensor(local.dtype(), with_rows(&local, total), out),
                host,
                local,
            ));
        }
        self.run("all_gather_v", &ops, &[], deadline)?;
        outs.into_iter().map(|(t, host, _)| Self::finish(t, host)).collect()
    }

    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_counts(counts, self.size(), "reduce_scatter_v counts")?;
        check_float(full, "reduce_scatter_v input")?;
        check_split_rows(full, counts)?;
        let host = full.is_host();
        let full = self.operand(full, "reduce_scatter_v input")?;
        let rb = row_bytes(&full);
        let (me, n) = (self.rank, counts[self.rank]);
        // The peers' blocks arrive side by side in rank order; the own block is summed where
        // it is, never copied or sent to itself.
        let (blocks, recv) = self.buffer((self.size - 1) * n * rb)?;
        let send = self.addr(&full)?;
        let mut ops = Vec::with_capacity(2 * self.size);
        let starts = offsets(counts);
        let own_at = starts[me];
        for (peer, (&c, o)) in counts.iter().zip(starts).enumerate().filter(|&(q, _)| q != me) {
            let slot = peer - usize::from(peer > me);
            ops.push(Op::Send {
                ptr: send + (o * rb) as u64,
                bytes: c * rb,
                peer,
            });
            ops.push(Op::Recv {
                ptr: recv + (slot * n * rb) as u64,
                bytes: n * rb,
                peer,
            });
        }
        self.run("reduce_scatter_v", &ops, &[], deadline)?;
        let blocks = self
            .dev
            .tensor(full.dtype(), with_rows(&full, (self.size - 1) * n), blocks);
        let own = OwnBlock {
            index: me,
            tensor: &full,
            first: own_at * full.row_len(),
        };
        Self::finish(
            sum_blocks_with(&blocks, Some(own), self.size, with_rows(&full, n))?,
            host,
        )
    }

    fn all_to_all_v(
        &self,
        send: &Tensor,
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Tensor> {
        let mut out = self.all_to_all_v_many(&[send], send_counts, recv_counts, deadline)?;
        out.pop()
            .ok_or_else(|| MoeError::lifecycle("NCCL all_to_all_v: no output"))
    }

    /// Every tensor's blocks in one NCCL group: one launch and one completion wait for all.
    fn all_to_all_v_many(
        &self,
        sends: &[&Tensor],
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Vec<Tensor>> {
        check_counts(send_counts, self.size(), "all_to_all_v send counts")?;
        check_counts(recv_counts, self.size(), "all_to_all_v recv counts")?;
        // The own block is a device copy on the side stream, not an NCCL send to itself.
        let me = self.rank;
        if send_counts[me] != recv_counts[me] {
            return Err(MoeError::config(
                "all_to_all_v counts",
                format!(
                    "rank {me} sends itself {} rows but expects {}",
                    send_counts[me], recv_counts[me]
                ),
            ));
        }
        let total: usize = recv_counts.iter().sum();
        let (so, ro) = (offsets(send_counts), offsets(recv_counts));
        let mut ops = Vec::with_capacity(2 * self.size * sends.len());
        let mut local = Vec::with_capacity(sends.len());
        let mut outs = Vec::with_capacity(sends.len());
        for send in sends {
            check_split_rows(send, send_counts)?;
            let host = send.is_host();
            let send = self.operand(send, "all_to_all_v input")?;
            let rb = row_bytes(&send);
            let (out, recv) = self.buffer(total * rb)?;
            let from = self.addr(&send)?;
            local.push(LocalCopy {
                dst: recv + (ro[me] * rb) as u64,
                src: from + (so[me] * rb) as u64,
                bytes: send_counts[me] * rb,
            });
            for peer in (0..self.size).filter(|&q| q != me) {
                ops.push(Op::Send {
                    ptr: from + (so[peer] * rb) as u64,
                    bytes: send_counts[peer] * rb,
                    peer,
                });
                ops.push(Op::Recv {
                    ptr: recv + (ro[peer] * rb) as u64,
                    bytes: recv_counts[peer] * rb,
                    peer,
                });
            }
            // The operand (an upload of a host tensor) lives until the collective has finished.
            outs.push((self.dev.tensor(send.dtype(), with_rows(&send, total), out), host, send));
        }
        self.run("all_to_all_v", &ops, &local, deadline)?;
        outs.into_iter().map(|(t, host, _)| Self::finish(t, host)).collect()
    }

    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor> {
        check_float(t, "all_reduce_sum input")?;
        let host = t.is_host();
        let t = self.operand(t, "all_reduce_sum input")?;
        let (numel, esz, p) = (t.numel(), t.dtype().size_in_bytes(), self.size);
        // Rank r sums elements [r * chunk, r * chunk + len(r)) of every rank, then every rank
        // gathers the sums: a reduce-scatter and an all-gather, like a ring all-reduce, with
        // the sums in f32 in rank order.
        let chunk = numel.div_ceil(p);
        let len = |r: usize| numel.saturating_sub(r * chunk).min(chunk);
        let mine = len(self.rank);
        let (blocks, recv) = self.buffer(p * mine * esz)?;
        let from = self.addr(&t)?;
        let mut ops = Vec::with_capacity(2 * p);
        for peer in 0..p {
            ops.push(Op::Send {
                ptr: from + (peer * chunk * esz) as u64,
                bytes: len(peer) * esz,
                peer,
            });
            ops.push(Op::Recv {
                ptr: recv + (peer * mine * esz) as u64,
                bytes: mine * esz,
                peer,
            });
        }
        self.run("all_reduce_sum (reduce-scatter half)", &ops, &[], deadline)?;
        let blocks = self.dev.tensor(t.dtype(), vec![p * mine], blocks);
        let part = sum_blocks(&blocks, p, vec![mine])?;
        let (out, dst) = self.buffer(numel * esz)?;
        let byte_counts: Vec<usize> = (0..p).map(|r| len(r) * esz).collect();
        let ops = self.gather_ops(self.addr(&part)?, dst, &byte_counts);
        self.run("all_reduce_sum (all-gather half)", &ops, &[], deadline)?;
        Self::finish(self.dev.tensor(t.dtype(), t.shape().to_vec(), out), host)
    }

    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>> {
        let mine = Tensor::from_host(
            DType::I64,
            vec![1, 1],
            HostStorage::Bytes((value as u64).to_le_bytes().to_vec()),
        )?;
        let all = self.all_gather_v(&mine, &vec![1; self.size], deadline)?;
        let bytes = match all.host("gathered values")? {
            HostStorage::Bytes(b) => b.clone(),
            _ => return Err(comm_err(None, "all_gather_usize: gathered values are not bytes")),
        };
        bytes
            .chunks_exact(8)
            .enumerate()
            .map(|(r, b)| {
                let arr: [u8; 8] = b.try_into().map_err(|_| comm_err(Some(r), "sent a malformed count"))?;
                usize::try_from(u64::from_le_bytes(arr)).map_err(|_| comm_err(Some(r), "sent a count beyond usize"))
            })
            .collect()
    }

    fn barrier(&self, deadline: Deadline) -> Result<()> {
        self.all_gather_usize(0, deadline).map(|_| ())
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
