//! [`CudaStorage`]: the device memory behind a device [`Tensor`], and the copies between host
//! and device tensors.
//!
//! A device tensor is a byte buffer on one device's stream; kernels view it as the element
//! type of the tensor's dtype (through [`super::ffi`]). Copies are queued on the device's
//! stream like every kernel, so a copy-then-launch sequence needs no synchronisation.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use moe_core::{DType, DeviceStorage, HostStorage, MoeError, Result, Storage, Tensor};

use super::device::{CudaDevice, dev_err};
use super::ffi;

/// Device memory of one tensor.
pub struct CudaStorage {
    dev: CudaDevice,
    buf: CudaSlice<u8>,
    len: usize,
}

impl fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaStorage({}, {} bytes)", self.dev.location(), self.len)
    }
}

impl DeviceStorage for CudaStorage {
    fn location(&self) -> String {
        self.dev.location()
    }
    fn len_bytes(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl CudaStorage {
    /// The device storage of `t`, or a typed error naming `what` for host tensors and for
    /// device memory of another runtime.
    pub fn of<'t>(t: &'t Tensor, what: &str) -> Result<&'t CudaStorage> {
        match t.storage() {
            Storage::Device(d) => d
                .as_any()
                .downcast_ref::<CudaStorage>()
                .ok_or_else(|| MoeError::DTypeMismatch {
                    what: what.into(),
                    expected: "CUDA device tensor".into(),
                    actual: d.location(),
                }),
            Storage::Host(_) => Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "CUDA device tensor".into(),
                actual: "host tensor".into(),
            }),
        }
    }

    /// The device storage of `t`, mutably: `t` must be a CUDA tensor and the only holder of
    /// its buffer (see `Tensor::device_storage_mut`), else a typed error naming `what`.
    pub fn of_mut<'t>(t: &'t mut Tensor, what: &str) -> Result<&'t mut CudaStorage> {
        CudaStorage::of(t, what)?;
        t.device_storage_mut()
            .and_then(|d| d.as_any_mut().downcast_mut::<CudaStorage>())
            .ok_or_else(|| MoeError::DTypeMismatch {
                what: what.into(),
                expected: "a CUDA device tensor with no other clone alive (written in place)".into(),
                actual: "a shared device tensor".into(),
            })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The raw buffer (CUDA build only: NCCL sends from it).
    pub fn bytes(&self) -> &CudaSlice<u8> {
        &self.buf
    }

    /// The raw buffer, mutably (CUDA build only: NCCL receives into it).
    pub fn bytes_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.buf
    }

    /// The buffer as `len` elements of `T` (kernel argument).
    pub(crate) fn view<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaView<'_, T>> {
        ffi::typed::<T>(&self.buf, len).ok_or_else(|| self.too_small::<T>(len))
    }

    pub(crate) fn view_mut<T: DeviceRepr + ValidAsZeroBits>(&mut self, len: usize) -> Result<CudaViewMut<'_, T>> {
        let err = self.too_small::<T>(len);
        ffi::typed_mut::<T>(&mut self.buf, len).ok_or(err)
    }

    fn too_small<T>(&self, len: usize) -> MoeError {
        MoeError::Backend(
            format!(
                "{}: buffer of {} bytes viewed as {len} elements of {} bytes",
                self.dev.location(),
                self.len,
                size_of::<T>()
            )
            .into(),
        )
    }
}

impl CudaDevice {
    /// A device buffer of `bytes` bytes whose contents the caller writes in full before reading.
    pub fn alloc_storage(&self, bytes: usize) -> Result<CudaStorage> {
        let buf = ffi::alloc_bytes(self.stream(), bytes, &self.location())?;
        Ok(CudaStorage {
            dev: self.clone(),
            buf,
            len: bytes,
        })
    }

    /// Wraps a filled buffer as a device tensor.
    pub fn tensor(&self, dtype: DType, shape: Vec<usize>, storage: CudaStorage) -> Tensor {
        Tensor::from_device(dtype, shape, Arc::new(storage))
    }

    /// A zero-filled device tensor.
    pub fn zeros(&self, dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let bytes = tensor_bytes(dtype, &shape);
        let mut s = self.alloc_storage(bytes)?;
        self.stream()
            .memset_zeros(&mut s.buf)
            .map_err(|e| dev_err(&self.location(), "memset", e))?;
        Ok(self.tensor(dtype, shape, s))
    }

    /// Copies a host tensor to this device (a device tensor of this device is returned as is).
    pub fn upload(&self, t: &Tensor) -> Result<Tensor> {
        let host = match t.storage() {
            Storage::Host(h) => h,
            Storage::Device(_) => {
                let s = CudaStorage::of(t, "upload source")?;
                if s.dev.ordinal() == self.ordinal() {
                    return Ok(t.clone());
                }
                return Err(MoeError::Backend(
                    format!(
                        "upload to {} of a tensor on {}: copy through the host",
                        self.location(),
                        s.dev.location()
                    )
                    .into(),
                ));
            }
        };
        let bytes = tensor_bytes(t.dtype(), t.shape());
        let mut s = self.alloc_storage(bytes)?;
        match host {
            HostStorage::F32(v) => self.htod(&mut s, v)?,
            HostStorage::F16(v) => self.htod(&mut s, v)?,
            HostStorage::BF16(v) => self.htod(&mut s, v)?,
            HostStorage::I32(v) => self.htod(&mut s, v)?,
            HostStorage::Bytes(v) => self.htod(&mut s, v)?,
        }
        Ok(self.tensor(t.dtype(), t.shape().to_vec(), s))
    }

    pub(crate) fn htod<T: DeviceRepr + ValidAsZeroBits>(&self, s: &mut CudaStorage, v: &[T]) -> Result<()> {
        if v.is_empty() {
            return Ok(());
        }
        let loc = self.location();
        let stream = self.stream().clone();
        let mut dst = s.view_mut::<T>(v.len())?;
        stream
            .memcpy_htod(v, &mut dst)
            .map_err(|e| dev_err(&loc, "host-to-device copy", e))
    }
}

/// Copies a device tensor to the host (waits for the device's queued work); host tensors are
/// returned as is.
pub fn download(t: &Tensor) -> Result<Tensor> {
    if t.is_host() {
        return Ok(t.clone());
    }
    let s = CudaStorage::of(t, "download source")?;
    let n = t.numel();
    let storage = match t.dtype() {
        DType::F32 => HostStorage::F32(dtoh::<f32>(s, n)?),
        DType::F16 => HostStorage::F16(dtoh::<f16>(s, n)?),
        DType::BF16 => HostStorage::BF16(dtoh::<bf16>(s, n)?),
        DType::I32 => HostStorage::I32(dtoh::<i32>(s, n)?),
        DType::I64 => HostStorage::Bytes(dtoh::<u8>(s, n * 8)?),
        _ => HostStorage::Bytes(dtoh::<u8>(s, n)?),
    };
    Tensor::from_host(t.dtype(), t.shape().to_vec(), storage)
}

pub(crate) fn dtoh<T: DeviceRepr + ValidAsZeroBits + Default + Clone>(s: &CudaStorage, n: usize) -> Result<Vec<T>> {
    let mut out = vec![T::default(); n];
    if n == 0 {
        return Ok(out);
    }
    let loc = s.dev.location();
    let src = s.view::<T>(n)?;
    s.dev
        .stream()
        .memcpy_dtoh(&src, &mut out)
        .map_err(|e| dev_err(&loc, "device-to-host copy", e))?;
    s.dev.wait()?;
    Ok(out)
}

/// Bytes of a tensor of `dtype` and `shape`.
pub(crate) fn tensor_bytes(dtype: DType, shape: &[usize]) -> usize {
    shape.iter().product::<usize>() * dtype.size_in_bytes()
}
