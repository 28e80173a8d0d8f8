//! The `unsafe` of the one cuBLASLt call of the CUDA layer: the e4m3 GEMM that
//! [`super::ceilings::fp8_matmul_tflops`] times. cudarc's safe cuBLASLt wrapper takes one
//! element type for A, B and D, so an FP8-in, bf16-out product goes through its raw `result`
//! and `sys` API here. Like `ffi.rs` (rule `cuda-unsafe-in-ffi` names both files), this file
//! only wraps: everything that decides sizes and checks buffers is above the `unsafe` blocks.

use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;
use moe_core::{MoeError, Result};

use super::device::dev_err;

/// Workspace handed to cuBLASLt: NVIDIA's recommendation for Hopper (32 MiB).
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

/// `cublasOperation_t` values of the TRANSA / TRANSB attributes (an `int32_t` each).
const OP_N: i32 = 0;
const OP_T: i32 = 1;

/// `D = op(A) · op(B)` with e4m3 A and B, bf16 D, f32 accumulation and f32 alpha / beta
/// (1 and 0), no scale pointers (every scale 1), column-major as cuBLASLt reads it: A is stored
/// `[k, m]` (`lda = k`) and read transposed, B `[k, n]` (`ldb = k`), D `[m, n]` (`ldd = m`).
/// This "TN" layout is the one cuBLASLt takes for FP8 inputs. The descriptors, the algorithm
/// (the heuristic's first choice for a 32 MiB workspace) and the workspace are made once.
pub(crate) struct Fp8Gemm {
    stream: Arc<CudaStream>,
    location: String,
    m: usize,
    n: usize,
    k: usize,
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    a_layout: sys::cublasLtMatrixLayout_t,
    b_layout: sys::cublasLtMatrixLayout_t,
    d_layout: sys::cublasLtMatrixLayout_t,
    algo: Option<sys::cublasLtMatmulAlgo_t>,
    workspace: Option<CudaSlice<u8>>,
}

/// cudarc panics when it cannot open libcublasLt or find one of its symbols (dynamic loading):
/// run `f` and report such a panic as an error naming the fix.
fn no_panic<T>(location: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(MoeError::Backend(
            format!("{location}: cuBLASLt could not be loaded (is libcublasLt on LD_LIBRARY_PATH? source gpu-env.sh)")
                .into(),
        ))
    })
}

impl Fp8Gemm {
    /// Creates the handle, descriptors and workspace of an `m x n x k` product on `stream`
    /// and asks cuBLASLt's heuristic for its algorithm; an error when the device or the library
    /// has none (FP8 GEMMs need compute capability 8.9 or newer).
    pub(crate) fn new(stream: &Arc<CudaStream>, m: usize, n: usize, k: usize, location: &str) -> Result<Fp8Gemm> {
        let dim = |v: usize, what: &str| {
            u64::try_from(v)
                .ok()
                .filter(|&d| d > 0 && i64::try_from(d).is_ok())
                .ok_or_else(|| MoeError::config(what, format!("{v} is not a cuBLASLt dimension")))
        };
        let (mu, nu, ku) = (dim(m, "m")?, dim(n, "n")?, dim(k, "k")?);
        // FP8 operands need 16-byte-aligned leading dimensions (one byte per element).
        if !k.is_multiple_of(16) || !m.is_multiple_of(8) {
            return Err(MoeError::config(
                "k",
                format!("cuBLASLt FP8 needs k a multiple of 16 and m of 8, got m = {m}, k = {k}"),
            ));
        }
        let mut g = Fp8Gemm {
            stream: stream.clone(),
            location: location.to_string(),
            m,
            n,
            k,
            handle: std::ptr::null_mut(),
            desc: std::ptr::null_mut(),
            a_layout: std::ptr::null_mut(),
            b_layout: std::ptr::null_mut(),
            d_layout: std::ptr::null_mut(),
            algo: None,
            workspace: None,
        };
        let err = |step: &str, e: lt::CublasError| dev_err(location, step, e);
        no_panic(location, || {
            g.handle = lt::create_handle().map_err(|e| err("creating the cuBLASLt handle", e))?;
            g.desc = lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(|e| err("creating the FP8 matmul descriptor", e))?;
            for (attr, op) in [
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, OP_T),
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, OP_N),
            ] {
                // SAFETY: `g.desc` was created above and is destroyed only by `Drop`; the
                // attribute is an int32_t and `op` an i32 that outlives the call, which copies it.
                unsafe { lt::set_matmul_desc_attribute(g.desc, attr, (&op as *const i32).cast(), size_of::<i32>()) }
                    .map_err(|e| err("setting the FP8 matmul's transposes", e))?;
            }
            let layout = |ty, rows: u64, cols: u64| {
                lt::create_matrix_layout(ty, rows, cols, rows as i64).map_err(|e| err("creating a matrix layout", e))
            };
            g.a_layout = layout(sys::cudaDataType_t::CUDA_R_8F_E4M3, ku, mu)?;
            g.b_layout = layout(sys::cudaDataType_t::CUDA_R_8F_E4M3, ku, nu)?;
            g.d_layout = layout(sys::cudaDataType_t::CUDA_R_16BF, mu, nu)?;
            let pref = lt::create_matmul_pref().map_err(|e| err("creating the heuristic preferences", e))?;
            let bytes = WORKSPACE_BYTES as u64;
            // SAFETY: `pref` was just created and is destroyed below, after its last use; the
            // attribute is a uint64_t and `bytes` a u64 that outlives the call, which copies it.
            let set = unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&bytes as *const u64).cast(),
                    size_of::<u64>(),
                )
            };
            // SAFETY: every descriptor and layout is live (created above, destroyed only by
            // `Drop` or, for `pref`, right after this call); C and D share `d_layout`.
            let heuristic = set.and_then(|()| unsafe {
                lt::get_matmul_algo_heuristic(g.handle, g.desc, g.a_layout, g.b_layout, g.d_layout, g.d_layout, pref)
            });
            // SAFETY: `pref` is not used after this line and was not destroyed before.
            let destroyed = unsafe { lt::destroy_matmul_pref(pref) };
            let heuristic = heuristic.map_err(|e| {
                err(
                    "finding a cuBLASLt algorithm for an e4m3 x e4m3 -> bf16 GEMM (needs compute capability 8.9 or newer)",
                    e,
                )
            })?;
            destroyed.map_err(|e| err("destroying the heuristic preferences", e))?;
            g.algo = Some(heuristic.algo);
            Ok(())
        })?;
        g.workspace = Some(
            stream
                .alloc_zeros::<u8>(WORKSPACE_BYTES)
                .map_err(|e| dev_err(location, "allocating the cuBLASLt workspace", e))?,
        );
        Ok(g)
    }

    /// Queues `d = aᵀ · b` on the stream (see the type's docs for the layouts).
    pub(crate) fn run(&self, a: &CudaSlice<u8>, b: &CudaSlice<u8>, d: &mut CudaSlice<bf16>) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if a.len() < k * m || b.len() < k * n || d.len() < m * n {
            return Err(MoeError::Backend(
                format!(
                    "{}: cuBLASLt FP8 gemm {m}x{n}x{k} does not fit its buffers (A {}, B {}, D {} elements)",
                    self.location,
                    a.len(),
                    b.len(),
                    d.len()
                )
                .into(),
            ));
        }
        let (Some(algo), Some(workspace)) = (self.algo.as_ref(), self.workspace.as_ref()) else {
            return Err(MoeError::Backend(
                format!("{}: the cuBLASLt FP8 gemm was not set up", self.location).into(),
            ));
        };
        let stream = &self.stream;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pw, _rw) = workspace.device_ptr(stream);
        let (pd, _rd) = d.device_ptr_mut(stream);
        let cu_stream: sys::cudaStream_t = stream.cu_stream().cast();
        no_panic(&self.location, || {
            // SAFETY: the handle, descriptor, layouts and algorithm were created by `new` for
            // these m, n, k and live until `Drop`; A, B and D hold at least the elements their
            // layouts address (checked above) and are device memory of `stream`, as is the
            // workspace of WORKSPACE_BYTES bytes the heuristic was told about; D is borrowed
            // exclusively, so the product writes memory nothing else reads, and C is D with
            // beta = 0 (read-only, same layout); alpha and beta are host f32 values (the
            // descriptor's scale type) that outlive the call.
            unsafe {
                lt::matmul(
                    self.handle,
                    self.desc,
                    (&alpha as *const f32).cast(),
                    (&beta as *const f32).cast(),
                    pa as *const c_void,
                    self.a_layout,
                    pb as *const c_void,
                    self.b_layout,
                    pd as *const c_void,
                    self.d_layout,
                    pd as *mut c_void,
                    self.d_layout,
                    algo,
                    pw as *mut c_void,
                    WORKSPACE_BYTES,
                    cu_stream,
                )
            }
            .map_err(|e| dev_err(&self.location, "cuBLASLt FP8 gemm", e))
        })
    }
}

impl Drop for Fp8Gemm {
    fn drop(&mut self) {
        // The queued products may still read the descriptors' state and the workspace.
        let _ = self.stream.synchronize();
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
            for layout in [self.a_layout, self.b_layout, self.d_layout] {
                if !layout.is_null() {
                    // SAFETY: created by `new`, destroyed only here, and no work that uses it
                    // is pending (the stream was synchronised above).
                    let _ = unsafe { lt::destroy_matrix_layout(layout) };
                }
            }
            if !self.desc.is_null() {
                // SAFETY: as above, for the matmul descriptor.
                let _ = unsafe { lt::destroy_matmul_desc(self.desc) };
            }
            if !self.handle.is_null() {
                // SAFETY: as above, for the handle, which every other object was used with.
                let _ = unsafe { lt::destroy_handle(self.handle) };
            }
        }));
    }
}
