//! The only `unsafe` of the CUDA layer: kernel launches and typed views of byte buffers.
//! Everything else in [`crate::cuda`] is safe code over cudarc's safe API.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchArgs, LaunchConfig,
    ValidAsZeroBits,
};
use moe_core::Result;

use super::device::dev_err;

/// Turns off cudarc's per-buffer event tracking for a context whose buffers are used from
/// one stream only (see [`super::device`]).
pub(crate) fn disable_event_tracking(ctx: &Arc<CudaContext>) {
    // SAFETY: every buffer of this context is allocated, used and freed on the device's one
    // stream (CudaDevice hands out no other), so stream order alone serialises all accesses
    // and the events cudarc would record are never needed.
    unsafe { ctx.disable_event_tracking() };
}

/// Keeps the memory the stream-ordered allocator frees in the device's pool instead of
/// returning it to the driver at every synchronisation. With the default threshold (0) each
/// forward after a host wait maps its scratch again: about 0.5 ms per forward of a
/// DeepSeek-V3 layer at 4096 tokens (1.1 GB of scratch), paid only outside graph replay.
pub(crate) fn keep_freed_memory(ctx: &Arc<CudaContext>, location: &str) -> Result<()> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    ctx.bind_to_thread()
        .map_err(|e| dev_err(location, "binding the context", e))?;
    // SAFETY: `pool` is a valid out-pointer for the device's current pool handle, and
    // `threshold` a valid u64 the driver reads for CU_MEMPOOL_ATTR_RELEASE_THRESHOLD (a
    // cuuint64_t attribute); both outlive the calls, and the device handle is the context's.
    unsafe {
        sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| dev_err(location, "reading the memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .map_err(|e| dev_err(location, "keeping freed memory in the pool", e))
    }
}

/// Launches `func` with the arguments `push` adds, in the order of the kernel's parameters.
///
/// Callers keep each launch next to the `extern "C"` signature it targets (same module name);
/// the argument list is checked against it by the differential tests on the GPU machine.
pub(crate) fn launch<'a>(
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    cfg: LaunchConfig,
    location: &str,
    push: impl FnOnce(&mut LaunchArgs<'a>),
) -> Result<()> {
    let mut args = stream.launch_builder(func);
    push(&mut args);
    // SAFETY: the arguments pushed match the kernel's parameter list in type and order (each
    // caller passes device buffers of the element type the kernel reads, sized for the
    // indices the grid covers, and scalars of the declared width); buffers outlive the launch
    // because they are borrowed for 'a and freed on the same stream after it.
    unsafe { args.launch(cfg) }
        .map(|_| ())
        .map_err(|e| dev_err(location, "kernel launch", e))
}

/// The bytes of `buf` as `len` elements of `T`.
pub(crate) fn typed<T: DeviceRepr + ValidAsZeroBits>(buf: &CudaSlice<u8>, len: usize) -> Option<CudaView<'_, T>> {
    // SAFETY: `T` is a plain number type valid for every bit pattern (ValidAsZeroBits +
    // DeviceRepr: f32, i32, bf16, f16, u8), and cudarc checks that `len` elements fit.
    unsafe { buf.transmute::<T>(len) }
}

/// The bytes of `buf` as `len` mutable elements of `T`.
pub(crate) fn typed_mut<T: DeviceRepr + ValidAsZeroBits>(
    buf: &mut CudaSlice<u8>,
    len: usize,
) -> Option<CudaViewMut<'_, T>> {
    // SAFETY: as in `typed`; the exclusive borrow of `buf` covers the returned view.
    unsafe { buf.transmute_mut::<T>(len) }
}

/// An uninitialised device buffer of `len` bytes; every caller writes all of it before any
/// read (kernels that fill an output, or a host copy).
pub(crate) fn alloc_bytes(stream: &Arc<CudaStream>, len: usize, location: &str) -> Result<CudaSlice<u8>> {
    // SAFETY: u8 has no invalid bit patterns; the contents are written before they are read
    // (see the doc comment), which the "poisoned output" tests check on the GPU machine.
    unsafe { stream.alloc::<u8>(len.max(1)) }.map_err(|e| dev_err(location, "allocating device memory", e))
}

/// `C = op(A) · op(B)` through cuBLAS (`cublasGemmEx`, bf16 in and out, f32 accumulation;
/// column-major as cuBLAS reads it). The buffer sizes are checked against the config first,
/// so a wrong config is an error rather than an out-of-bounds access.
pub(crate) fn gemm_bf16(
    blas: &cudarc::cublas::CudaBlas,
    cfg: cudarc::cublas::GemmConfig<half::bf16>,
    a: &CudaSlice<half::bf16>,
    b: &CudaSlice<half::bf16>,
    c: &mut CudaSlice<half::bf16>,
    location: &str,
) -> Result<()> {
    use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
    let dim = |v: i32| usize::try_from(v).unwrap_or(0);
    let (m, n, k) = (dim(cfg.m), dim(cfg.n), dim(cfg.k));
    // Stored (rows, cols) of each operand, column-major with leading dimension ld >= rows.
    let (ar, ac) = if cfg.transa == CUBLAS_OP_N { (m, k) } else { (k, m) };
    let (br, bc) = if cfg.transb == CUBLAS_OP_N { (k, n) } else { (n, k) };
    let fits = |rows: usize, cols: usize, ld: i32, len: usize| {
        let ld = dim(ld);
        rows > 0 && cols > 0 && ld >= rows && ld * (cols - 1) + rows <= len
    };
    if !(fits(ar, ac, cfg.lda, a.len()) && fits(br, bc, cfg.ldb, b.len()) && fits(m, n, cfg.ldc, c.len())) {
        return Err(moe_core::MoeError::Backend(
            format!(
                "{location}: cuBLAS gemm {m}x{n}x{k} does not fit its buffers (A {}, B {}, C {} elements)",
                a.len(),
                b.len(),
                c.len()
            )
            .into(),
        ));
    }
    // SAFETY: the three buffers hold at least the elements the column-major operands of
    // `cfg` address (checked above), all are device memory of the stream `blas` is bound to,
    // and `c` is borrowed exclusively, so the product writes memory nothing else reads.
    unsafe { <cudarc::cublas::CudaBlas as cudarc::cublas::Gemm<half::bf16>>::gemm(blas, cfg, a, b, c) }
        .map_err(|e| dev_err(location, "cuBLAS bf16 gemm", e))
}

// SAFETY: `GemmArgs`, `WeightArgs` and `ActArgs` are `#[repr(C)]` structs of u64 addresses,
// i32 and f32 fields whose order, types and padding match the C structs of the same names in
// `kernels/experts/` (formats.cu, gemv.cu), so the kernel reads exactly the bytes pushed.
unsafe impl DeviceRepr for super::experts::GemmArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::experts::WeightArgs {}
// SAFETY: as above.
unsafe impl DeviceRepr for super::experts::ActArgs {}
// SAFETY: as above (`QuantIo` in `kernels/experts/fp8.cu`: two addresses, each followed by an f32 and
// the 4 padding bytes both compilers insert before the next 8-byte field).
unsafe impl DeviceRepr for super::experts::fp8::QuantIo {}

/// A bulk-tensor-copy (TMA) descriptor, passed by value to the kernels that copy with it
/// (`TensorMap` in `kernels/experts/tma.cu`).
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // the bytes are read by the kernels, never by Rust
pub(crate) struct TensorMap(cudarc::driver::sys::CUtensorMap);

// SAFETY: `CUtensorMap` is the driver's 128-byte plain-data descriptor; the kernels declare the
// parameter as a 128-byte, 64-byte-aligned struct and hand its address to the copy engine
// unchanged, exactly as the driver API documents for `__grid_constant__` tensor maps.
unsafe impl DeviceRepr for TensorMap {}

/// The element type of a matrix a tensor map copies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum MapElem {
    Bf16,
    F16,
    /// Raw bytes: E4M3 codes.
    U8,
}

impl MapElem {
    fn bytes(self) -> usize {
        if self == MapElem::U8 { 1 } else { 2 }
    }
}

/// The descriptor of a row-major `rows x cols` matrix of `elem` values at device address
/// `addr`, copied in boxes of `box_rows` rows x 128 bytes (one swizzle span: 64 16-bit values
/// or 128 codes) into the 128-byte swizzle that `wgmma` reads; out-of-range elements arrive as
/// zeros.
pub(crate) fn tensor_map(
    addr: u64,
    elem: MapElem,
    rows: usize,
    cols: usize,
    box_rows: u32,
    location: &str,
) -> Result<TensorMap> {
    use cudarc::driver::sys;
    let bad = |why: String| moe_core::MoeError::Backend(format!("{location}: tensor map: {why}").into());
    let pitch = cols * elem.bytes();
    if !addr.is_multiple_of(16) || !pitch.is_multiple_of(16) || rows == 0 || cols == 0 || rows > u32::MAX as usize {
        return Err(bad(format!(
            "{rows} x {cols} at {addr:#x} (needs a 16-byte aligned base and row pitch)"
        )));
    }
    let box_cols = (128 / elem.bytes()) as u32;
    let dims: [u64; 2] = [cols as u64, rows as u64];
    let strides: [u64; 1] = [pitch as u64];
    let boxes: [u32; 2] = [box_cols, box_rows];
    let unit: [u32; 2] = [1, 1];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let dtype = match elem {
        MapElem::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        MapElem::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        MapElem::U8 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
    };
    // SAFETY: every pointer refers to a live local array of the length the driver reads for a
    // rank-2 map (2 dims, 1 stride, 2 box sizes, 2 element strides); the call only encodes the
    // descriptor on the host and keeps no pointer. The global address is device memory that
    // outlives every launch the descriptor is passed to (the caller's buffer).
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            2,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(bad(format!(
            "cuTensorMapEncodeTiled({rows} x {cols} {elem:?}, box {box_rows} x {box_cols}): {rc:?}"
        )));
    }
    Ok(TensorMap(map))
}

/// Whether an NVRTC library can be opened (cudarc opens it lazily and panics when it is
/// missing; callers ask first).
pub(crate) fn nvrtc_available() -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate library names and drops
    // what it opened; it touches no NVRTC state.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version as `major.minor`, or `None` when the library is missing.
pub(crate) fn nvrtc_version() -> Option<String> {
    if !nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both out-pointers are valid `c_int`s living across the call.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().ok().map(|()| format!("{major}.{minor}"))
}

/// Compiles `src` (named `name` in NVRTC's messages) with `options` and returns the CUBIN (when
/// the options name a real architecture, `sm_90a`) or the NUL-free PTX text's bytes; the
/// error is NVRTC's status and log. The caller checks [`nvrtc_available`] first.
pub(crate) fn nvrtc_compile(
    src: &str,
    name: &str,
    options: &[String],
    output: crate::cuda::aot::Output,
) -> std::result::Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    let c_src = std::ffi::CString::new(src).map_err(|_| format!("{name}: source holds a NUL byte"))?;
    let c_name = std::ffi::CString::new(name).map_err(|_| format!("{name}: name holds a NUL byte"))?;
    let prog = result::create_program(&c_src, Some(&c_name)).map_err(|e| format!("{name}: {e}"))?;
    // SAFETY: `prog` was created above from `c_src` and `c_name`, which outlive it; it is
    // compiled, read and destroyed exactly once, here, and never used after `destroy_program`.
    // The CUBIN buffer is allocated with the size NVRTC reports for it before NVRTC writes it.
    unsafe {
        let out = match result::compile_program(prog, options) {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .unwrap_or_default();
                Err(format!("{name}: {e}\n{log}"))
            }
            Ok(()) => match output {
                crate::cuda::aot::Output::Ptx => result::get_ptx(prog)
                    .map(|p| p.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect())
                    .map_err(|e| format!("{name}: reading the PTX: {e}")),
                crate::cuda::aot::Output::Cubin => {
                    let mut size = 0usize;
                    match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                        Err(e) => Err(format!("{name}: reading the CUBIN size: {e}")),
                        Ok(()) if size == 0 => Err(format!("{name}: no CUBIN (a virtual architecture?)")),
                        Ok(()) => {
                            let mut buf = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                                .result()
                                .map(|()| buf)
                                .map_err(|e| format!("{name}: reading the CUBIN: {e}"))
                        }
                    }
                }
            },
        };
        let _ = result::destroy_program(prog);
        out
    }
}
