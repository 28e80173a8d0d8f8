//! Tensors whose storage lives on the host or on a device.
//!
//! Tensors are contiguous and row-major. Host storage keeps typed vectors for the float and
//! index types and raw bytes for the quantized byte types. Device storage is an opaque trait
//! object implemented by `moe-kernels` (CUDA), so no contract here assumes host memory and
//! this crate never names a GPU crate.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{MoeError, Result};

/// Memory owned by a device runtime (implemented in `moe-kernels`).
pub trait DeviceStorage: Send + Sync + fmt::Debug {
    /// Human-readable location, e.g. `cuda:0`.
    fn location(&self) -> String;
    /// Size of the allocation in bytes.
    fn len_bytes(&self) -> usize;
    /// Downcast hook for the crate that implements it.
    fn as_any(&self) -> &dyn Any;
    /// Mutable downcast hook: lets the implementing crate write into a buffer its caller owns
    /// alone (a CUDA graph's input buffers, refilled in place between replays).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Host memory of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    /// Raw bytes for the byte dtypes (FP8, E8M0, packed FP4, u8, i8) and i64 (little endian).
    Bytes(Vec<u8>),
}

/// Where a tensor's elements live.
#[derive(Clone, Debug)]
pub enum Storage {
    Host(HostStorage),
    Device(Arc<dyn DeviceStorage>),
}

/// A contiguous, row-major tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// Builds a host tensor, checking that the storage variant and length fit dtype and shape.
    pub fn from_host(dtype: DType, shape: Vec<usize>, storage: HostStorage) -> Result<Tensor> {
        let n = numel(&shape);
        let (ok_variant, len) = match (&storage, dtype) {
            (HostStorage::F32(v), DType::F32) => (true, v.len()),
            (HostStorage::F16(v), DType::F16) => (true, v.len()),
            (HostStorage::BF16(v), DType::BF16) => (true, v.len()),
            (HostStorage::I32(v), DType::I32) => (true, v.len()),
            (HostStorage::Bytes(v), d) if d.size_in_bytes() == 1 => (true, v.len()),
            (HostStorage::Bytes(v), DType::I64) => (true, v.len() / 8),
            _ => (false, 0),
        };
        if !ok_variant {
            return Err(MoeError::DTypeMismatch {
                what: "tensor storage".into(),
                expected: dtype.to_string(),
                actual: format!("{:?}", std::mem::discriminant(&storage)),
            });
        }
        if len != n {
            return Err(MoeError::shape("tensor storage", format!("{n} elements"), &[len]));
        }
        Ok(Tensor {
            dtype,
            shape,
            storage: Storage::Host(storage),
        })
    }

    /// Wraps device memory; `moe-kernels` is the only caller.
    pub fn from_device(dtype: DType, shape: Vec<usize>, storage: Arc<dyn DeviceStorage>) -> Tensor {
        Tensor {
            dtype,
            shape,
            storage: Storage::Device(storage),
        }
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_host(DType::F32, shape, HostStorage::F32(data))
    }

    pub fn from_i32(shape: Vec<usize>, data: Vec<i32>) -> Result<Tensor> {
        Tensor::from_host(DType::I32, shape, HostStorage::I32(data))
    }

    /// Converts f32 values into a host tensor of a float dtype (round to nearest even).
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, data: &[f32]) -> Result<Tensor> {
        let storage = match dtype {
            DType::F32 => HostStorage::F32(data.to_vec()),
            DType::F16 => HostStorage::F16(data.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => HostStorage::BF16(data.iter().map(|&v| bf16::from_f32(v)).collect()),
            other => {
                return Err(MoeError::DTypeMismatch {
                    what: "from_f32_as".into(),
                    expected: "f32, f16 or bf16".into(),
                    actual: other.to_string(),
                });
            }
        };
        Tensor::from_host(dtype, shape, storage)
    }

    /// A zero-filled host tensor.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        let storage = match dtype {
            DType::F32 => HostStorage::F32(vec![0.0; n]),
            DType::F16 => HostStorage::F16(vec![f16::ZERO; n]),
            DType::BF16 => HostStorage::BF16(vec![bf16::ZERO; n]),
            DType::I32 => HostStorage::I32(vec![0; n]),
            DType::I64 => HostStorage::Bytes(vec![0; n * 8]),
            _ => HostStorage::Bytes(vec![0; n]),
        };
        Tensor {
            dtype,
            shape,
            storage: Storage::Host(storage),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The device storage, mutably, when this tensor is its only holder (no clone of it is
    /// alive); `None` for host tensors and shared device storage. Writing in place through
    /// a shared buffer would change every clone, so only a sole owner may.
    pub fn device_storage_mut(&mut self) -> Option<&mut (dyn DeviceStorage + 'static)> {
        match &mut self.storage {
            Storage::Device(d) => Arc::get_mut(d),
            Storage::Host(_) => None,
        }
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn is_host(&self) -> bool {
        matches!(self.storage, Storage::Host(_))
    }

    /// Leading dimension (tokens of an activation), 0 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Elements per leading-dimension row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Host storage, or an error naming `what` if the tensor lives on a device.
    pub fn host(&self, what: &str) -> Result<&HostStorage> {
        match &self.storage {
            Storage::Host(h) => Ok(h),
            Storage::Device(d) => Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "host tensor".into(),
                actual: d.location(),
            }),
        }
    }

    /// Mutable host storage (see [`Tensor::host`]).
    pub fn host_mut(&mut self, what: &str) -> Result<&mut HostStorage> {
        match &mut self.storage {
            Storage::Host(h) => Ok(h),
            Storage::Device(d) => Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "host tensor".into(),
                actual: d.location(),
            }),
        }
    }

    /// Checks the shape, naming `what` in the error.
    pub fn expect_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(MoeError::shape(what, format!("{shape:?}"), &self.shape));
        }
        Ok(())
    }

    /// Checks the dtype, naming `what` in the error.
    pub fn expect_dtype(&self, what: &str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: dtype.to_string(),
                actual: self.dtype.to_string(),
            });
        }
        Ok(())
    }

    /// Borrowed f32 elements of a host f32 tensor.
    pub fn as_f32(&self, what: &str) -> Result<&[f32]> {
        match self.host(what)? {
            HostStorage::F32(v) => Ok(v),
            _ => Err(self.dtype_err(what, "f32")),
        }
    }

    /// Borrowed i32 elements of a host i32 tensor.
    pub fn as_i32(&self, what: &str) -> Result<&[i32]> {
        match self.host(what)? {
            HostStorage::I32(v) => Ok(v),
            _ => Err(self.dtype_err(what, "i32")),
        }
    }

    /// Raw bytes of a host byte-dtype tensor.
    pub fn as_bytes(&self, what: &str) -> Result<&[u8]> {
        match self.host(what)? {
            HostStorage::Bytes(v) => Ok(v),
            _ => Err(self.dtype_err(what, "a byte dtype")),
        }
    }

    fn dtype_err(&self, what: &str, expected: &str) -> MoeError {
        MoeError::DTypeMismatch {
            what: what.into(),
            expected: expected.into(),
            actual: self.dtype.to_string(),
        }
    }

    /// Float elements of a host f32/f16/bf16 tensor, widened to f32 (a copy).
    pub fn to_f32_vec(&self, what: &str) -> Result<Vec<f32>> {
        match self.host(what)? {
            HostStorage::F32(v) => Ok(v.clone()),
            HostStorage::F16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            HostStorage::BF16(v) => Ok(v.iter().map(|x| x.to_f32()).collect()),
            _ => Err(self.dtype_err(what, "a float dtype")),
        }
    }

    /// Converts a host float tensor to another float dtype (round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let v = self.to_f32_vec("to_dtype")?;
        Tensor::from_f32_as(dtype, self.shape.clone(), &v)
    }

    /// Copies rows `start..start + len` of the leading dimension (host tensors).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        let rows = self.rows();
        if start + len > rows {
            return Err(MoeError::shape(
                "narrow_rows",
                format!("rows {start}..{} within {rows}", start + len),
                &self.shape,
            ));
        }
        let w = self.row_len();
        let (a, b) = (start * w, (start + len) * w);
        let storage = match self.host("narrow_rows")? {
            HostStorage::F32(v) => HostStorage::F32(v[a..b].to_vec()),
            HostStorage::F16(v) => HostStorage::F16(v[a..b].to_vec()),
            HostStorage::BF16(v) => HostStorage::BF16(v[a..b].to_vec()),
            HostStorage::I32(v) => HostStorage::I32(v[a..b].to_vec()),
            HostStorage::Bytes(v) => {
                let e = self.dtype.size_in_bytes();
                HostStorage::Bytes(v[a * e..b * e].to_vec())
            }
        };
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = len;
        }
        Tensor::from_host(self.dtype, shape, storage)
    }

    /// Concatenates host tensors of equal dtype and row shape along the leading dimension.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| MoeError::shape("concat_rows", "at least one part", &[]))?;
        let mut shape = first.shape.clone();
        let mut rows = 0;
        for p in parts {
            if p.dtype != first.dtype || p.shape.get(1..) != first.shape.get(1..) {
                return Err(MoeError::shape(
                    "concat_rows part",
                    format!("{:?}", first.shape),
                    &p.shape,
                ));
            }
            rows += p.rows();
        }
        shape[0] = rows;
        macro_rules! cat {
            ($variant:ident) => {{
                let mut out = Vec::new();
                for p in parts {
                    match p.host("concat_rows")? {
                        HostStorage::$variant(v) => out.extend_from_slice(v),
                        _ => unreachable!("dtype checked above"),
                    }
                }
                HostStorage::$variant(out)
            }};
        }
        let storage = match first.host("concat_rows")? {
            HostStorage::F32(_) => cat!(F32),
            HostStorage::F16(_) => cat!(F16),
            HostStorage::BF16(_) => cat!(BF16),
            HostStorage::I32(_) => cat!(I32),
            HostStorage::Bytes(_) => cat!(Bytes),
        };
        Tensor::from_host(first.dtype, shape, storage)
    }

    /// Overwrites leading-dimension row `dst_row` with row `src_row` of `src` (same dtype and
    /// row shape; host tensors). EPLB migration moves one slot's bytes this way.
    pub fn copy_row_from(&mut self, dst_row: usize, src: &Tensor, src_row: usize) -> Result<()> {
        if self.dtype != src.dtype || self.shape.get(1..) != src.shape.get(1..) {
            return Err(MoeError::shape(
                "copy_row_from source",
                format!("{} {:?}", self.dtype, self.shape),
                &src.shape,
            ));
        }
        if dst_row >= self.rows() || src_row >= src.rows() {
            return Err(MoeError::shape(
                "copy_row_from",
                format!("row {dst_row} of {} and row {src_row} of {}", self.rows(), src.rows()),
                &self.shape,
            ));
        }
        let w = self.row_len();
        let (d, s) = (dst_row * w..(dst_row + 1) * w, src_row * w..(src_row + 1) * w);
        let e = self.dtype.size_in_bytes();
        match (self.host_mut("copy_row_from")?, src.host("copy_row_from")?) {
            (HostStorage::F32(a), HostStorage::F32(b)) => a[d].copy_from_slice(&b[s]),
            (HostStorage::F16(a), HostStorage::F16(b)) => a[d].copy_from_slice(&b[s]),
            (HostStorage::BF16(a), HostStorage::BF16(b)) => a[d].copy_from_slice(&b[s]),
            (HostStorage::I32(a), HostStorage::I32(b)) => a[d].copy_from_slice(&b[s]),
            (HostStorage::Bytes(a), HostStorage::Bytes(b)) => {
                a[d.start * e..d.end * e].copy_from_slice(&b[s.start * e..s.end * e])
            }
            _ => unreachable!("equal dtypes have equal storage variants (checked by from_host)"),
        }
        Ok(())
    }

    /// Appends `extra` zero rows (host tensors); used for attention-DP padding.
    pub fn pad_rows(&self, extra: usize) -> Result<Tensor> {
        if extra == 0 {
            return Ok(self.clone());
        }
        let mut zshape = self.shape.clone();
        zshape[0] = extra;
        Tensor::concat_rows(&[self.clone(), Tensor::zeros(self.dtype, zshape)])
    }
}

/// A borrowed (or, for adapted layouts, owned) view of a checkpoint tensor: little-endian
/// element bytes as stored on disk, with dtype and shape.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Decodes float elements to f32 (f32, f16, bf16 views).
    pub fn to_f32_vec(&self, name: &str) -> Result<Vec<f32>> {
        let d = &self.data;
        let expected_bytes = self.numel() * self.dtype.size_in_bytes();
        if d.len() != expected_bytes {
            return Err(MoeError::BadCheckpoint {
                path: name.into(),
                detail: format!(
                    "{} bytes for {:?} {}, expected {expected_bytes}",
                    d.len(),
                    self.shape,
                    self.dtype
                ),
            });
        }
        Ok(match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(MoeError::DTypeMismatch {
                    what: name.into(),
                    expected: "f32, f16 or bf16".into(),
                    actual: other.to_string(),
                });
            }
        })
    }

    /// Copies the view into an owned host tensor of the same dtype.
    pub fn to_tensor(&self, name: &str) -> Result<Tensor> {
        let storage = match self.dtype {
            DType::F32 => HostStorage::F32(self.to_f32_vec(name)?),
            DType::F16 => HostStorage::F16(
                self.data
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => HostStorage::BF16(
                self.data
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::I32 => HostStorage::I32(
                self.data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            _ => HostStorage::Bytes(self.data.to_vec()),
        };
        Tensor::from_host(self.dtype, self.shape.clone(), storage).map_err(|e| MoeError::BadCheckpoint {
            path: name.into(),
            detail: e.to_string(),
        })
    }

    /// Checks the shape against what the layer expects, naming the tensor.
    pub fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(MoeError::shape(name, format!("{shape:?}"), &self.shape));
        }
        Ok(())
    }
}

impl Tensor {
    /// Little-endian byte view of a host tensor (for writers and weight sources).
    pub fn view(&self) -> Result<TensorView<'_>> {
        let data: Cow<'_, [u8]> = match self.host("view")? {
            HostStorage::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostStorage::F16(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostStorage::BF16(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostStorage::I32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            HostStorage::Bytes(v) => Cow::Borrowed(v.as_slice()),
        };
        Ok(TensorView {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_host_checks_length_and_variant() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::from_host(DType::BF16, vec![1], HostStorage::F32(vec![0.0])).is_err());
    }

    #[test]
    fn narrow_concat_pad_round_trip() {
        let t = Tensor::from_f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let a = t.narrow_rows(0, 1).unwrap();
        let b = t.narrow_rows(1, 2).unwrap();
        let c = Tensor::concat_rows(&[a, b]).unwrap();
        assert_eq!(c.as_f32("c").unwrap(), t.as_f32("t").unwrap());
        let p = t.pad_rows(2).unwrap();
        assert_eq!(p.shape(), &[5, 2]);
        assert_eq!(&p.as_f32("p").unwrap()[6..], &[0.0; 4]);
        assert!(t.narrow_rows(2, 2).is_err());
    }

    #[test]
    fn copy_row_moves_one_slot() {
        let mut a = Tensor::zeros(DType::F8E4M3, vec![2, 3]);
        let b = Tensor::from_host(DType::F8E4M3, vec![3, 3], HostStorage::Bytes((0..9).collect())).unwrap();
        a.copy_row_from(1, &b, 2).unwrap();
        assert_eq!(a.as_bytes("a").unwrap(), &[0, 0, 0, 6, 7, 8]);
        assert!(a.copy_row_from(2, &b, 0).is_err());
        let f = Tensor::zeros(DType::F32, vec![3, 3]);
        assert!(a.copy_row_from(0, &f, 0).is_err());
    }

    #[test]
    fn view_round_trips_bf16() {
        let t = Tensor::from_f32_as(DType::BF16, vec![2], &[1.5, -2.25]).unwrap();
        let v = t.view().unwrap();
        assert_eq!(v.to_f32_vec("t").unwrap(), vec![1.5, -2.25]);
        let back = v.to_tensor("t").unwrap();
        assert_eq!(back.to_f32_vec("b").unwrap(), vec![1.5, -2.25]);
    }
}
