//! CUDA-graph capture of the work a closure queues on a device's one stream
//! ([`CudaDevice::capture`]), its replay ([`DeviceGraph::launch`]), and the in-place copies
//! that feed a graph ([`CudaDevice::copy_into`], [`CudaDevice::upload_into`]).
//!
//! A forward queues its kernels without waiting for the host (see [`super::device`]), so it
//! can be recorded once and replayed with one launch: an engine's decode step pays the host
//! launch latency of its dozens of kernels once per graph instead of once per kernel. Two
//! things a forward does on the host have to take another shape while capturing:
//! - small host constants it reads (a routing bias, a static routing table) are uploaded once
//!   per device and reused ([`CudaDevice::constant`]), since a pageable host copy cannot be
//!   captured; capture therefore follows at least one eager forward (which also compiles the
//!   kernels), as in every engine;
//! - routing's refusal status words, which an eager forward allocates and checks at the next
//!   `synchronize`, live in words owned by the graph and allocated before the capture: each
//!   replay folds its refusals into them and `synchronize` after a replay reports and clears
//!   them, so a NaN logit fed to a graph is reported as it is for an eager forward.
//!
//! Buffers allocated inside the capture (a forward's scratch, through stream-ordered
//! allocation) become the graph's allocation and free nodes. A buffer allocated inside and not
//! freed inside (a forward's output kept past the closure) would leave the graph unable to be
//! relaunched, so the closure copies what it keeps into a buffer allocated before the capture
//! ([`CudaDevice::copy_into`]) and drops the rest. The graph reads the buffers the captured
//! work read (inputs, weights) at their addresses: the caller keeps them alive and refills the
//! inputs in place ([`CudaDevice::upload_into`], [`CudaDevice::copy_into`]) between replays.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaGraph;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use moe_core::{DType, HostStorage, MoeError, Result, Storage, Tensor};

use super::device::{CudaDevice, dev_err};
use super::storage::{CudaStorage, dtoh};

/// Routing calls one captured graph may hold (each needs one status word, allocated before the
/// capture begins because nothing can be allocated outside a graph while it is captured). A
/// layer forward routes once per chunk.
pub const MAX_CAPTURED_STATUS_WORDS: usize = 16;

/// Constants kept per device before the cache starts over (each is at most a few KiB: a
/// routing bias of `E` floats or a static table of `N * k` ids). Graphs hold their own
/// references, so starting over never frees memory a graph reads.
const MAX_CONSTANTS: usize = 256;

/// Turns a status word's value into the error of the operation that wrote it (0: no error).
pub(crate) type StatusDecoder = Box<dyn Fn(u64) -> Result<()> + Send + Sync>;

/// The persistent status words of one graph (see the module doc).
struct StatusWords {
    words: Vec<Mutex<CudaStorage>>,
    /// One decoder per word used, in capture order.
    decoders: Mutex<Vec<StatusDecoder>>,
    /// Whether a check of these words is already queued for the next synchronisation.
    armed: AtomicBool,
}

impl StatusWords {
    /// Reads every used word, clears the non-zero ones and returns the first error.
    fn check(&self) -> Result<()> {
        self.armed.store(false, Ordering::SeqCst);
        let decoders = self.decoders.lock().unwrap_or_else(|p| p.into_inner());
        let mut first = Ok(());
        for (word, decode) in self.words.iter().zip(decoders.iter()) {
            let mut word = word.lock().unwrap_or_else(|p| p.into_inner());
            let value = dtoh::<u64>(&word, 1)?[0];
            if value != 0 {
                word.zero()?;
            }
            let r = decode(value);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// A capture in progress on a device's stream (held by the device while `f` runs).
pub(crate) struct CaptureState {
    what: String,
    status: Arc<StatusWords>,
    /// Device tensors the captured work reads that the cache could drop (constants).
    keep_alive: Vec<Tensor>,
}

/// A word of the graph being captured, for an operation that reports refusals on the device.
pub(crate) struct CapturedStatus {
    status: Arc<StatusWords>,
    index: usize,
}

impl CapturedStatus {
    /// Runs `f` with the word's buffer (8 bytes, zero until a replay writes it).
    pub(crate) fn with_word<R>(&self, f: impl FnOnce(&mut CudaStorage) -> Result<R>) -> Result<R> {
        let mut word = self.status.words[self.index].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut word)
    }
}

/// Key of an uploaded constant: dtype, shape and the values' bits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConstKey {
    dtype: DType,
    shape: Vec<usize>,
    bits: Vec<u32>,
}

/// A replayable CUDA graph of work captured on one device's stream ([`CudaDevice::capture`]).
pub struct DeviceGraph {
    dev: CudaDevice,
    what: String,
    graph: CudaGraph,
    status: Arc<StatusWords>,
    /// Constants the graph reads, kept at their addresses for the graph's life.
    _keep_alive: Vec<Tensor>,
}

impl fmt::Debug for DeviceGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceGraph({} on {})", self.what, self.dev.location())
    }
}

impl DeviceGraph {
    /// Queues one replay on the device's stream and returns without waiting. Refusals the
    /// replayed routing records (NaN logits, ...) are reported by the device's next
    /// `synchronize`, as for an eager forward.
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(|e| {
            dev_err(
                &self.dev.location(),
                &format!("launching the graph of {}", self.what),
                e,
            )
        })?;
        let used = !self
            .status
            .decoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        // One queued check covers every replay before it: the words accumulate (atomicMax of
        // the first refusal) until the check reads and clears them.
        if used && !self.status.armed.swap(true, Ordering::SeqCst) {
            let status = self.status.clone();
            self.dev.defer_check(move || status.check());
        }
        Ok(())
    }

    /// What was captured (the label given to [`CudaDevice::capture`]).
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }
}

impl CudaDevice {
    /// Captures the work `f` queues on this device's stream into a [`DeviceGraph`] (nothing
    /// runs meanwhile), returning it with `f`'s value. `what` names the captured work in
    /// errors.
    ///
    /// The capture is always ended, also when `f` fails or panics. Work that cannot be
    /// captured (a host synchronisation, a download, a pageable host copy) fails inside `f`
    /// and invalidates the capture: that is returned as [`MoeError::GraphCapture`] naming
    /// `what`, the partial graph is discarded and the device stays usable. An error of `f`
    /// that did not invalidate the capture is returned as it is.
    ///
    /// The device has one stream, and the capture records whatever is queued on it: no other
    /// thread may use this device until `f` returns. Tensors `f` creates belong to the graph;
    /// `f` drops them (copying what it keeps into buffers allocated before the capture, with
    /// [`CudaDevice::copy_into`]) rather than returning them.
    pub fn capture<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<(DeviceGraph, T)> {
        let loc = self.location();
        let fail = |detail: String| MoeError::GraphCapture {
            what: what.to_string(),
            detail,
        };
        let mut words = Vec::with_capacity(MAX_CAPTURED_STATUS_WORDS);
        for _ in 0..MAX_CAPTURED_STATUS_WORDS {
            let mut w = self.alloc_storage(8)?;
            w.zero()?;
            words.push(Mutex::new(w));
        }
        let status = Arc::new(StatusWords {
            words,
            decoders: Mutex::new(Vec::new()),
            armed: AtomicBool::new(false),
        });
        {
            let mut state = self.capture_state();
            if let Some(s) = state.as_ref() {
                return Err(fail(format!("the capture of {} is in progress on {loc}", s.what)));
            }
            // An error cudarc recorded before the capture belongs to earlier work; report it
            // as such rather than let it end this capture early.
            self.context()
                .check_err()
                .map_err(|e| dev_err(&loc, "before graph capture", e))?;
            // Thread-local mode: this thread's potentially unsafe calls (a synchronisation, a
            // synchronous allocation or copy) fail while it captures, so a host sync hidden in
            // the captured work is an error rather than a graph that silently lacks it. Global
            // mode would also fail other threads' unrelated work (other devices, other
            // contexts), and relaxed mode would let those calls through unnoticed.
            self.stream()
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| fail(format!("beginning the capture on {loc}: {e}")))?;
            *state = Some(CaptureState {
                what: what.to_string(),
                status: status.clone(),
                keep_alive: Vec::new(),
            });
        }
        let outcome = catch_unwind(AssertUnwindSafe(f));
        let state = self.capture_state().take();
        // cudarc records errors of calls that cannot return one (a free, an event record) and
        // returns them from the next call, which would make `end_capture` fail before ending
        // the capture: take them first.
        let recorded = self.context().check_err();
        let ended = self.stream().end_capture(CUgraphInstantiate_flags(0));
        let outcome = match outcome {
            Ok(r) => r,
            Err(panic) => {
                drop((ended, state));
                resume_unwind(panic)
            }
        };
        let invalidated = match (&recorded, &ended) {
            (Err(e), _) => Some(format!("an operation recorded {e}")),
            (Ok(()), Err(e)) => Some(format!("ending the capture: {e}")),
            (Ok(()), Ok(None)) => Some("the capture produced no graph".to_string()),
            (Ok(()), Ok(Some(_))) => None,
        };
        let value = match (outcome, invalidated) {
            (Ok(v), None) => v,
            (Err(e), None) => return Err(e),
            (Ok(_), Some(why)) => return Err(fail(format!("{why} on {loc}"))),
            (Err(e), Some(why)) => return Err(fail(format!("{e} ({why} on {loc})"))),
        };
        let graph = match ended {
            Ok(Some(g)) => g,
            _ => return Err(fail(format!("the capture produced no graph on {loc}"))),
        };
        graph
            .upload()
            .map_err(|e| dev_err(&loc, &format!("uploading the graph of {what}"), e))?;
        Ok((
            DeviceGraph {
                dev: self.clone(),
                what: what.to_string(),
                graph,
                status,
                _keep_alive: state.map(|s| s.keep_alive).unwrap_or_default(),
            },
            value,
        ))
    }

    /// Inside a capture, the next status word of the graph, with `decode` turning its value
    /// into the caller's error at the synchronisation after a replay; `None` when this device
    /// is not capturing (the caller allocates and checks its own word).
    pub(crate) fn captured_status(&self, decode: StatusDecoder) -> Result<Option<CapturedStatus>> {
        let state = self.capture_state();
        let Some(s) = state.as_ref() else {
            return Ok(None);
        };
        let mut decoders = s.status.decoders.lock().unwrap_or_else(|p| p.into_inner());
        if decoders.len() >= s.status.words.len() {
            return Err(MoeError::GraphCapture {
                what: s.what.clone(),
                detail: format!(
                    "more than {MAX_CAPTURED_STATUS_WORDS} routing calls in one graph (each needs a status word allocated before the capture)"
                ),
            });
        }
        decoders.push(decode);
        Ok(Some(CapturedStatus {
            status: s.status.clone(),
            index: decoders.len() - 1,
        }))
    }

    /// The host tensor `host` (f32 or i32) on this device, uploaded at its first use and shared
    /// afterwards, so a forward reading it (a routing bias, a static routing table) does not
    /// upload on every call: a graph cannot capture that pageable copy. Inside a capture a
    /// constant not uploaded yet is a [`MoeError::GraphCapture`] error (run the work once
    /// eagerly first), and the graph keeps the constants it reads alive.
    pub(crate) fn constant(&self, host: &Tensor, what: &str) -> Result<Tensor> {
        let bits = match host.dtype() {
            DType::F32 => host.as_f32(what)?.iter().map(|v| v.to_bits()).collect(),
            DType::I32 => host.as_i32(what)?.iter().map(|&v| v as u32).collect(),
            other => {
                return Err(MoeError::DTypeMismatch {
                    what: what.into(),
                    expected: "an f32 or i32 host constant".into(),
                    actual: other.to_string(),
                });
            }
        };
        let key = ConstKey {
            dtype: host.dtype(),
            shape: host.shape().to_vec(),
            bits,
        };
        let cached = self.constants().get(&key).cloned();
        let mut state = self.capture_state();
        if let Some(s) = state.as_mut() {
            return match cached {
                Some(t) => {
                    s.keep_alive.push(t.clone());
                    Ok(t)
                }
                None => Err(MoeError::GraphCapture {
                    what: s.what.clone(),
                    detail: format!(
                        "`{what}` is not on {} yet: run the work once eagerly before capturing it (an upload is a pageable host copy, which a graph cannot capture)",
                        self.location()
                    ),
                }),
            };
        }
        drop(state);
        if let Some(t) = cached {
            return Ok(t);
        }
        let t = self.upload(host)?;
        let mut constants = self.constants();
        if constants.len() >= MAX_CONSTANTS {
            constants.clear();
        }
        constants.insert(key, t.clone());
        Ok(t)
    }

    /// Queues a copy of the device tensor `src` into the device tensor `dst` (same dtype and
    /// shape, both on this device, `dst` held by no other clone). Capturable: a graph's
    /// output is copied this way into a buffer allocated before the capture, and a new input
    /// can be copied into a graph's input buffer before a replay.
    pub fn copy_into(&self, dst: &mut Tensor, src: &Tensor) -> Result<()> {
        same_layout(dst, src)?;
        let bytes = super::storage::tensor_bytes(src.dtype(), src.shape());
        let loc = self.location();
        let s = CudaStorage::of(src, "copy source")?;
        self.expect_here(s, "copy source")?;
        let d = CudaStorage::of_mut(dst, "copy destination")?;
        self.expect_here(d, "copy destination")?;
        if bytes == 0 {
            return Ok(());
        }
        let from = s.bytes().slice(0..bytes);
        let mut to = d.bytes_mut().slice_mut(0..bytes);
        self.stream()
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| dev_err(&loc, "device-to-device copy", e))
    }

    /// Copies the host tensor `src` into the device tensor `dst` in place (same dtype and shape,
    /// `dst` held by no other clone): how new inputs reach a captured graph's input buffers
    /// between replays. A pageable host copy: not capturable.
    pub fn upload_into(&self, dst: &mut Tensor, src: &Tensor) -> Result<()> {
        same_layout(dst, src)?;
        let host = match src.storage() {
            Storage::Host(h) => h,
            Storage::Device(_) => {
                return Err(MoeError::DTypeMismatch {
                    what: "upload source".into(),
                    expected: "host tensor".into(),
                    actual: "device tensor".into(),
                });
            }
        };
        let d = CudaStorage::of_mut(dst, "upload destination")?;
        self.expect_here(d, "upload destination")?;
        match host {
            HostStorage::F32(v) => self.htod(d, v),
            HostStorage::F16(v) => self.htod(d, v),
            HostStorage::BF16(v) => self.htod(d, v),
            HostStorage::I32(v) => self.htod(d, v),
            HostStorage::Bytes(v) => self.htod(d, v),
        }
    }

    fn expect_here(&self, s: &CudaStorage, what: &str) -> Result<()> {
        if s.device().ordinal() == self.ordinal() {
            Ok(())
        } else {
            Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: format!("a tensor on {}", self.location()),
                actual: s.device().location(),
            })
        }
    }
}

/// `dst` and `src` have the same dtype and shape.
fn same_layout(dst: &Tensor, src: &Tensor) -> Result<()> {
    dst.expect_dtype("copy destination", src.dtype())?;
    dst.expect_shape("copy destination", src.shape())
}
