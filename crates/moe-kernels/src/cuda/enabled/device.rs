//! [`CudaDevice`]: a GPU's context, its stream and its compiled modules.
//!
//! Every kernel of a device runs on that device's one stream, in issue order, so a forward
//! needs no host synchronisation between its kernels and can be captured into a CUDA graph.
//! Because nothing else touches the device's buffers from another stream, cudarc's per-buffer
//! event tracking is switched off (it would record an event per kernel argument).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use moe_core::{MoeError, Result};

use super::compile::load_module;
use super::ffi;
use super::graph::{CaptureState, ConstKey};

/// Wraps a driver/NVRTC failure as the workspace error, naming the device and the step.
pub(crate) fn dev_err(location: &str, step: &str, e: impl fmt::Display) -> MoeError {
    MoeError::Backend(format!("{location}: {step}: {e}").into())
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    /// Compute capability as `major * 10 + minor` (90 on Hopper).
    sm: u32,
    multiprocessors: u32,
    /// Bytes of L2 cache.
    l2_bytes: usize,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// Kernels already looked up, by `module/variant` and function name.
    functions: Mutex<HashMap<(String, String), CudaFunction>>,
    /// Checks of device-side status words queued by asynchronous operations (routing's NaN
    /// refusals), run at the next synchronisation: the CUDA model of asynchronous errors.
    pending: Mutex<Vec<PendingCheck>>,
    /// The capture in progress on the stream, if any ([`CudaDevice::capture`]).
    capture: Mutex<Option<CaptureState>>,
    /// Small host constants a forward reads (routing bias, static routing tables), uploaded
    /// once: an upload is a pageable host copy, which a CUDA graph cannot capture.
    constants: Mutex<HashMap<ConstKey, moe_core::Tensor>>,
}

/// The define that marks code using architecture-specific instructions (Hopper's wgmma).
pub(crate) const WGMMA_DEFINE: &str = "WGMMA";

/// A deferred check (see `Inner::pending`).
type PendingCheck = Box<dyn FnOnce() -> Result<()> + Send>;

/// One GPU: its context, its stream and the kernels compiled for it. Cheap to clone.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CudaDevice(cuda:{} {} sm_{})",
            self.inner.ordinal, self.inner.name, self.inner.sm
        )
    }
}

/// Devices opened so far, so every caller of `new(i)` shares one context, stream and cache.
fn opened() -> &'static Mutex<HashMap<usize, CudaDevice>> {
    static OPENED: OnceLock<Mutex<HashMap<usize, CudaDevice>>> = OnceLock::new();
    OPENED.get_or_init(Default::default)
}

impl CudaDevice {
    /// Opens GPU `ordinal` (or returns the already opened handle). Fails with a typed error
    /// when the driver library is missing or there is no such device.
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        let mut map = opened().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let loc = format!("cuda:{ordinal}");
        let count = Self::count();
        if ordinal >= count {
            return Err(MoeError::Backend(
                format!("{loc}: no such device ({count} visible)").into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err(&loc, "creating the context", e))?;
        ffi::disable_event_tracking(&ctx);
        ffi::keep_freed_memory(&ctx, &loc)?;
        let stream = ctx.new_stream().map_err(|e| dev_err(&loc, "creating the stream", e))?;
        let name = ctx.name().map_err(|e| dev_err(&loc, "reading the name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| dev_err(&loc, "reading the capability", e))?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dev_err(&loc, "reading the multiprocessor count", e))?;
        let l2_bytes = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_err(|e| dev_err(&loc, "reading the L2 cache size", e))?;
        let dev = CudaDevice {
            inner: Arc::new(Inner {
                ctx,
                stream,
                ordinal,
                name,
                sm: (major * 10 + minor) as u32,
                multiprocessors: multiprocessors.max(1) as u32,
                l2_bytes: l2_bytes.max(0) as usize,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                capture: Mutex::new(None),
                constants: Mutex::new(HashMap::new()),
            }),
        };
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    /// Visible CUDA devices; 0 when the driver cannot be loaded.
    pub fn count() -> usize {
        // The driver library is opened lazily by cudarc and panics when it is missing; a
        // machine without a GPU must read as "no devices", not abort.
        std::panic::catch_unwind(|| CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)).unwrap_or(0)
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The device's product name (`NVIDIA H100 80GB HBM3`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Compute capability as `major * 10 + minor` (90 on Hopper).
    pub fn sm(&self) -> u32 {
        self.inner.sm
    }

    /// Whether the device runs the `WGMMA` variants: `wgmma`, the bulk tensor copies they are
    /// fed by and `setmaxnreg` are sm_90a's, an architecture-specific target that no later
    /// generation implements (Blackwell's tensor-core instructions are others), so only
    /// compute capability 9.0 takes those paths; other devices take the `mma.sync` kernels.
    pub fn has_wgmma(&self) -> bool {
        self.inner.sm == 90
    }

    pub fn multiprocessors(&self) -> u32 {
        self.inner.multiprocessors
    }

    /// Bytes of L2 cache.
    pub fn l2_bytes(&self) -> usize {
        self.inner.l2_bytes
    }

    /// `cuda:N`, as tensors and errors name the device.
    pub fn location(&self) -> String {
        format!("cuda:{}", self.inner.ordinal)
    }

    /// Waits for all work queued on the device's stream, then reports the first error that
    /// queued work recorded on the device (a NaN router logit, ...), as CUDA reports
    /// asynchronous errors at the next synchronisation.
    pub fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| dev_err(&self.location(), "synchronize", e))?;
        self.run_pending_checks()
    }

    /// Waits for the device's stream without running the deferred checks (downloads).
    pub(crate) fn wait(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| dev_err(&self.location(), "synchronize", e))
    }

    /// Queues `check` (which reads a device status word) for the next synchronisation
    /// ([`CudaDevice::synchronize`]).
    pub(crate) fn defer_check(&self, check: impl FnOnce() -> Result<()> + Send + 'static) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(check));
    }

    /// Runs and clears the deferred checks; the first failure is returned (all are cleared).
    fn run_pending_checks(&self) -> Result<()> {
        let checks = std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut first = Ok(());
        for c in checks {
            let r = c();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
    /// The capture in progress on this device's stream (`None` when not capturing).
    pub(crate) fn capture_state(&self) -> std::sync::MutexGuard<'_, Option<CaptureState>> {
        self.inner.capture.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The uploaded constants (see `Inner::constants`).
    pub(crate) fn constants(&self) -> std::sync::MutexGuard<'_, HashMap<ConstKey, moe_core::Tensor>> {
        self.inner.constants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's context (graph capture drains the errors cudarc recorded during it).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The device's one stream (CUDA build only: for moe-comm's NCCL group, whose
    /// communicator must run on the stream the kernels run on).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Kernel `func` of module `module` (CUDA C source `src`), compiled by NVRTC for this
    /// device at first use and cached for the life of the device.
    pub(crate) fn function(&self, module: &str, src: &'static str, func: &str) -> Result<CudaFunction> {
        self.function_variant(module, src, None, func)
    }

    /// [`CudaDevice::function`] for one variant of a source: each whitespace-separated word of
    /// `define` is prepended as `#define <word>` (`NAME=VALUE` as `#define NAME VALUE`) and the
    /// module is cached as
    /// `<module>/<define>`, so a source can hold many instantiations of which each process
    /// compiles only those it uses. A variant that defines [`WGMMA_DEFINE`] is compiled for the
    /// architecture-specific target (`sm_90a`).
    pub(crate) fn function_variant(
        &self,
        module: &str,
        src: &'static str,
        define: Option<&str>,
        func: &str,
    ) -> Result<CudaFunction> {
        let key = match define {
            Some(d) => format!("{module}/{d}"),
            None => module.to_string(),
        };
        let fkey = (key, func.to_string());
        if let Some(f) = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fkey)
        {
            return Ok(f.clone());
        }
        let key = fkey.0.clone();
        let m = {
            let mut cache = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some(m) => m.clone(),
                None => {
                    // AOT CUBIN, disk cache or NVRTC (`WGMMA` variants for sm_90a): compile.rs.
                    let m = load_module(&self.inner.ctx, &self.location(), module, src, define, self.inner.sm)?;
                    cache.insert(key.clone(), m.clone());
                    m
                }
            }
        };
        let f = m
            .load_function(func)
            .map_err(|e| dev_err(&self.location(), &format!("kernel `{key}::{func}`"), e))?;
        self.inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fkey, f.clone());
        Ok(f)
    }
    /// Starts a device-side timer: events recorded on the device's stream.
    pub fn timer(&self) -> Result<CudaTimer> {
        let loc = self.location();
        let ev = |what| {
            self.inner
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| dev_err(&loc, what, e))
        };
        let (start, end) = (ev("creating the start event")?, ev("creating the end event")?);
        start
            .record(&self.inner.stream)
            .map_err(|e| dev_err(&loc, "recording the start event", e))?;
        Ok(CudaTimer {
            dev: self.clone(),
            start,
            end,
        })
    }
}

/// Device time between [`CudaDevice::timer`] and [`CudaTimer::stop_ms`], read from events.
pub struct CudaTimer {
    dev: CudaDevice,
    start: CudaEvent,
    end: CudaEvent,
}

impl fmt::Debug for CudaTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaTimer({})", self.dev.location())
    }
}

impl CudaTimer {
    /// Records the end event, waits for it and returns the elapsed device time in ms.
    pub fn stop_ms(self) -> Result<f64> {
        let loc = self.dev.location();
        self.end
            .record(self.dev.stream())
            .map_err(|e| dev_err(&loc, "recording the end event", e))?;
        self.end
            .synchronize()
            .map_err(|e| dev_err(&loc, "waiting for the end event", e))?;
        let ms = self
            .start
            .elapsed_ms(&self.end)
            .map_err(|e| dev_err(&loc, "reading the timer", e))?;
        Ok(f64::from(ms))
    }
}
