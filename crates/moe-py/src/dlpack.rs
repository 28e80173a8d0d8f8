//! DLPack in both directions, without copies.
//!
//! Import: any object with `__dlpack__`/`__dlpack_device__` (NumPy arrays, torch tensors)
//! becomes a [`BorrowedHostTensor`] whose owner is the consumed capsule's
//! `DLManagedTensor`; dropping the borrow calls the producer's deleter, which releases the
//! producer's reference (NumPy's and torch's deleters may run on any thread, as the DLPack
//! specification requires of them).
//!
//! Export: a [`DlpackTensor`] holds the layer's output [`Tensor`] (or a borrow) behind an
//! `Arc`; each `__dlpack__` call hands out a capsule whose `DLManagedTensor` points at that
//! memory and keeps a clone of the `Arc`, so `torch.from_dlpack` / `numpy.from_dlpack` see
//! the same bytes the layer wrote.
//!
//! Only the legacy (unversioned, `"dltensor"`) capsule is produced and consumed: both NumPy
//! (>= 1.22) and torch speak it, and a consumer asking for a versioned one accepts it.

use std::ffi::{CStr, c_void};
use std::sync::Arc;

use moe_core::{BorrowedHostTensor, DType, HostStorage, MoeError, Tensor};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::{device_error, to_py};

const DLTENSOR: &CStr = c"dltensor";
const USED_DLTENSOR: &CStr = c"used_dltensor";

/// `kDLCPU`, `kDLCUDA`, `kDLCUDAHost`, `kDLCUDAManaged` of `dlpack.h`.
const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const DL_CUDA_HOST: i32 = 3;
const DL_CUDA_MANAGED: i32 = 13;

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `(code, bits)` of `dlpack.h` (`kDLInt` 0, `kDLUInt` 1, `kDLFloat` 2, `kDLBfloat` 4).
fn dl_dtype(d: DType) -> Option<DLDataType> {
    let (code, bits) = match d {
        DType::F32 => (2, 32),
        DType::F16 => (2, 16),
        DType::BF16 => (4, 16),
        DType::I32 => (0, 32),
        DType::I64 => (0, 64),
        DType::I8 => (0, 8),
        DType::U8 => (1, 8),
        _ => return None,
    };
    Some(DLDataType { code, bits, lanes: 1 })
}

fn from_dl_dtype(t: DLDataType) -> Option<DType> {
    if t.lanes != 1 {
        return None;
    }
    Some(match (t.code, t.bits) {
        (2, 32) => DType::F32,
        (2, 16) => DType::F16,
        (4, 16) => DType::BF16,
        (0, 32) => DType::I32,
        (0, 64) => DType::I64,
        (0, 8) => DType::I8,
        (1, 8) => DType::U8,
        _ => return None,
    })
}

fn dl_dtype_name(t: DLDataType) -> String {
    let kind = match t.code {
        0 => "int",
        1 => "uint",
        2 => "float",
        4 => "bfloat",
        5 => "complex",
        6 => "bool",
        _ => "code",
    };
    format!("{kind}{}x{}", t.bits, t.lanes)
}

fn device_name(device_type: i32, id: i32) -> String {
    match device_type {
        DL_CPU => "cpu".into(),
        DL_CUDA => format!("cuda:{id}"),
        DL_CUDA_HOST => format!("cuda_host:{id}"),
        DL_CUDA_MANAGED => format!("cuda_managed:{id}"),
        other => format!("dlpack device type {other}:{id}"),
    }
}

/// A consumed capsule's tensor: calling its deleter on drop is what releases the producer.
struct ManagedOwner(*mut DLManagedTensor);

// SAFETY: DLPack requires deleters to be callable from any thread (NumPy's takes the GIL
// itself, torch's frees an ATen reference), and nothing else touches the pointer.
unsafe impl Send for ManagedOwner {}
// SAFETY: the owner is never read through `&self`; only `Drop` uses the pointer.
unsafe impl Sync for ManagedOwner {}

impl Drop for ManagedOwner {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from a capsule we renamed to "used_dltensor", so we own it and
        // call its deleter exactly once, here; a null deleter means nothing to release.
        unsafe {
            if let Some(deleter) = (*self.0).deleter {
                deleter(self.0);
            }
        }
    }
}

/// The device `obj` reports through `__dlpack_device__`, as `(type, id)`.
fn dlpack_device(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(i32, i32)> {
    if !obj.hasattr("__dlpack__")? || !obj.hasattr("__dlpack_device__")? {
        let ty = obj.get_type().name()?.to_string();
        return Err(PyTypeError::new_err(format!(
            "`{what}`: expected a tensor that supports DLPack (a NumPy array or a torch tensor), got {ty}"
        )));
    }
    obj.call_method0("__dlpack_device__")?.extract()
}

/// Borrows the host memory of `obj` (no copy), refusing device tensors and non-contiguous
/// layouts with typed errors that name `what`.
pub fn import(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<BorrowedHostTensor> {
    let (device_type, device_id) = dlpack_device(obj, what)?;
    if device_type != DL_CPU {
        return Err(device_error(format!(
            "`{what}` is on {}; this build of moe_rs takes host (CPU) tensors only (the CUDA DLPack path is not built)",
            device_name(device_type, device_id)
        )));
    }
    let capsule = obj.call_method0("__dlpack__")?;
    // SAFETY: `capsule` is a live Python object for the whole block (bound to the GIL); the
    // capsule API checks the name and sets a Python error on mismatch.
    let managed = unsafe { ffi::PyCapsule_GetPointer(capsule.as_ptr(), DLTENSOR.as_ptr()) }.cast::<DLManagedTensor>();
    if managed.is_null() {
        return Err(PyErr::take(obj.py()).unwrap_or_else(|| {
            PyTypeError::new_err(format!("`{what}`: __dlpack__ did not return a \"dltensor\" capsule"))
        }));
    }
    // SAFETY: renaming marks the capsule consumed (the DLPack protocol), so its destructor
    // will not call the deleter; from here on `ManagedOwner` owns the tensor.
    if unsafe { ffi::PyCapsule_SetName(capsule.as_ptr(), USED_DLTENSOR.as_ptr()) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    let owner = ManagedOwner(managed);
    // SAFETY: the producer keeps `dl_tensor` and its shape/strides arrays valid until the
    // deleter runs, which only `owner`'s drop does.
    let t = unsafe { &(*managed).dl_tensor };
    let dtype = from_dl_dtype(t.dtype).ok_or_else(|| {
        to_py(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "f32, f16, bf16 (or i32, i64, i8, u8)".into(),
            actual: dl_dtype_name(t.dtype),
        })
    })?;
    let ndim = usize::try_from(t.ndim).map_err(|_| PyTypeError::new_err(format!("`{what}`: negative ndim")))?;
    let (shape, strides): (&[i64], Option<&[i64]>) = if ndim == 0 {
        (&[], None)
    } else {
        // SAFETY: DLPack: `shape` holds `ndim` entries and `strides` is null or holds `ndim`
        // entries, valid while the managed tensor lives (it outlives this function).
        unsafe {
            (
                std::slice::from_raw_parts(t.shape, ndim),
                (!t.strides.is_null()).then(|| std::slice::from_raw_parts(t.strides, ndim)),
            )
        }
    };
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| to_py(MoeError::shape(what, "non-negative sizes", &[])))?;
    if let Some(strides) = strides {
        // Row-major contiguity; a size-1 dimension's stride is irrelevant (torch reports
        // arbitrary strides there).
        let mut expect = 1i64;
        for (d, (&size, &stride)) in shape.iter().zip(strides).enumerate().rev() {
            if size != 1 && stride != expect {
                return Err(to_py(MoeError::shape(
                    what,
                    format!(
                        "a contiguous row-major tensor (stride {expect} in dimension {d}, got strides {strides:?})"
                    ),
                    &shape,
                )));
            }
            expect *= size as i64;
        }
    }
    let offset = usize::try_from(t.byte_offset).map_err(|_| PyTypeError::new_err("byte_offset overflows"))?;
    let ptr = t.data.cast::<u8>().cast_const().wrapping_add(offset);
    // SAFETY: `ptr` is the start of the producer's contiguous host buffer of
    // numel * element-size bytes (checked contiguous above; device checked CPU). The producer
    // keeps it alive until the deleter runs, which only dropping `owner` (moved into the
    // borrow) does. The layer only reads it; callers are told not to write to a tensor while
    // a call that borrowed it is running.
    unsafe { BorrowedHostTensor::from_raw_parts(dtype, shape, ptr, Box::new(owner)) }.map_err(to_py)
}

/// What an exported tensor's memory belongs to.
enum Source {
    Owned(Tensor),
    Borrowed(BorrowedHostTensor),
}

impl Source {
    fn dtype(&self) -> DType {
        match self {
            Source::Owned(t) => t.dtype(),
            Source::Borrowed(b) => b.dtype(),
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Source::Owned(t) => t.shape(),
            Source::Borrowed(b) => b.shape(),
        }
    }

    fn data_ptr(&self) -> Result<*const u8, MoeError> {
        Ok(match self {
            Source::Owned(t) => match t.host("exported tensor")? {
                HostStorage::F32(v) => v.as_ptr().cast(),
                HostStorage::F16(v) => v.as_ptr().cast(),
                HostStorage::BF16(v) => v.as_ptr().cast(),
                HostStorage::I32(v) => v.as_ptr().cast(),
                HostStorage::Bytes(v) => v.as_ptr(),
            },
            Source::Borrowed(b) => b.data_ptr(),
        })
    }
}

/// Context of one exported capsule: keeps the memory alive and owns the shape array.
struct ExportCtx {
    _source: Arc<Source>,
    _shape: Vec<i64>,
}

unsafe extern "C" fn export_deleter(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` and its `manager_ctx` were made by `Box::into_raw` in `to_capsule` and
    // the protocol calls the deleter once; dropping them releases the `Arc` (no Python
    // object is touched, so no GIL is needed).
    unsafe {
        let m = Box::from_raw(managed);
        drop(Box::from_raw(m.manager_ctx.cast::<ExportCtx>()));
    }
}

unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the GIL held on our own capsule. A consumer that took the
    // tensor renamed it ("used_dltensor") and owns the deleter call; otherwise nobody took it
    // and we release it here. Neither capsule call sets a Python error on this path (the name
    // is checked first), so an exception in flight while the capsule dies is left untouched.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()).cast::<DLManagedTensor>();
            export_deleter(m);
        }
    }
}

/// A host tensor of the layer (its output, or a borrowed input handed back) that NumPy and
/// torch import by DLPack without a copy.
#[pyclass(module = "moe_rs._native", name = "DlpackTensor", frozen)]
pub struct DlpackTensor {
    source: Arc<Source>,
}

impl DlpackTensor {
    pub fn owned(t: Tensor) -> PyResult<DlpackTensor> {
        let d = DlpackTensor {
            source: Arc::new(Source::Owned(t)),
        };
        d.check()?;
        Ok(d)
    }

    pub fn borrowed(b: BorrowedHostTensor) -> PyResult<DlpackTensor> {
        let d = DlpackTensor {
            source: Arc::new(Source::Borrowed(b)),
        };
        d.check()?;
        Ok(d)
    }

    /// Refuses tensors DLPack cannot describe before a capsule is asked for.
    fn check(&self) -> PyResult<()> {
        self.source.data_ptr().map_err(to_py)?;
        if dl_dtype(self.source.dtype()).is_none() {
            return Err(to_py(MoeError::DTypeMismatch {
                what: "exported tensor".into(),
                expected: "a dtype DLPack describes (f32, f16, bf16, i32, i64, i8, u8)".into(),
                actual: self.source.dtype().to_string(),
            }));
        }
        Ok(())
    }

    fn to_capsule<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let source = self.source.clone();
        let dtype = dl_dtype(source.dtype()).ok_or_else(|| PyTypeError::new_err("dtype without DLPack code"))?;
        let data = source.data_ptr().map_err(to_py)?;
        let shape: Vec<i64> = source.shape().iter().map(|&d| d as i64).collect();
        let ndim = shape.len() as i32;
        let mut ctx = Box::new(ExportCtx {
            _source: source,
            _shape: shape,
        });
        let shape_ptr = ctx._shape.as_mut_ptr();
        let managed = Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data: data.cast_mut().cast(),
                device: DLDevice {
                    device_type: DL_CPU,
                    device_id: 0,
                },
                ndim,
                dtype,
                shape: shape_ptr,
                // Null strides: compact row-major, which every tensor of the layer is.
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: Box::into_raw(ctx).cast(),
            deleter: Some(export_deleter),
        });
        let raw = Box::into_raw(managed);
        // SAFETY: `raw` is a valid DLManagedTensor; the capsule's destructor releases it unless a
        // consumer renamed the capsule and took over the deleter call.
        let cap = unsafe { ffi::PyCapsule_New(raw.cast(), DLTENSOR.as_ptr(), Some(capsule_destructor)) };
        if cap.is_null() {
            // SAFETY: no capsule took `raw`, so it is still ours to release.
            unsafe { export_deleter(raw) };
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `cap` is a new, non-null reference that we hand to `Bound`.
        Ok(unsafe { Bound::from_owned_ptr(py, cap) })
    }
}

#[pymethods]
impl DlpackTensor {
    /// A DLPack capsule of the tensor (the array-API protocol; `stream`, `max_version`,
    /// `dl_device` and `copy` are accepted for the protocol's sake: the tensor is on the host,
    /// so there is no stream to order, and it is never copied).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (stream, max_version);
        if let Some((t, id)) = dl_device
            && t != DL_CPU
        {
            return Err(device_error(format!(
                "the tensor is on the host; export to {} is not supported",
                device_name(t, id)
            )));
        }
        if copy == Some(true) {
            return Err(PyTypeError::new_err(
                "moe_rs tensors are exported without copies (copy=True is not supported)",
            ));
        }
        self.to_capsule(py)
    }

    /// `(kDLCPU, 0)`.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (DL_CPU, 0)
    }

    /// Address of the first element: the memory every import of this tensor shares.
    #[getter]
    fn data_ptr(&self) -> PyResult<usize> {
        Ok(self.source.data_ptr().map_err(to_py)? as usize)
    }

    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.source.shape().to_vec()
    }

    /// The layer's dtype name (`f32`, `bf16`, ...).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.source.dtype().as_str()
    }

    fn __repr__(&self) -> String {
        format!(
            "DlpackTensor(dtype={}, shape={:?})",
            self.source.dtype(),
            self.source.shape()
        )
    }
}

/// `moe_rs._native.borrow(x)`: `x` as the layer reads it (no copy), handed back out.
#[pyfunction]
pub fn borrow(x: &Bound<'_, PyAny>) -> PyResult<DlpackTensor> {
    DlpackTensor::borrowed(import(x, "x")?)
}
