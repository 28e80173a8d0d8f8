//! Host tensors that borrow memory owned by someone else (a NumPy array, a torch tensor
//! handed over by DLPack), and a [`WeightSource`] over them.
//!
//! [`Tensor`]'s host storage is a set of owned vectors that every kernel matches on, so
//! borrowing is a separate type rather than a new storage variant: a [`BorrowedHostTensor`]
//! serves zero-copy byte views ([`TensorView`] with borrowed data, which is what weight
//! loading reads) and typed slices, and converts to an owned [`Tensor`] only when asked
//! ([`BorrowedHostTensor::to_tensor`], one copy).
//!
//! The memory is kept alive by an opaque owner (for Python: the DLPack capsule's managed
//! tensor, whose deleter releases the producer's reference), dropped with the borrow.

use std::any::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;

use crate::dtype::DType;
use crate::error::{MoeError, Result};
use crate::tensor::{Tensor, TensorView};
use crate::weights::WeightSource;

/// A contiguous, row-major host tensor whose elements live in memory this value does not
/// allocate; `owner` keeps that memory alive and is dropped with it.
pub struct BorrowedHostTensor {
    dtype: DType,
    shape: Vec<usize>,
    ptr: NonNull<u8>,
    len_bytes: usize,
    // Dropped after the fields above are last used: it is what keeps `ptr` valid.
    _owner: Box<dyn Any + Send + Sync>,
}

// SAFETY: the contract of `from_raw_parts` makes the memory read-only and valid for as long as
// `_owner` lives, and `_owner` is itself `Send + Sync`, so sharing or moving the borrow across
// threads only ever reads immutable memory that stays alive.
unsafe impl Send for BorrowedHostTensor {}
// SAFETY: see the `Send` impl: every access through `&self` is a read of immutable memory.
unsafe impl Sync for BorrowedHostTensor {}

impl fmt::Debug for BorrowedHostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BorrowedHostTensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("ptr", &self.ptr)
            .finish_non_exhaustive()
    }
}

impl BorrowedHostTensor {
    /// Borrows `numel(shape) * dtype.size_in_bytes()` bytes at `ptr` (for I64 eight bytes an
    /// element; for the byte types one). Null or misaligned pointers are refused with
    /// [`MoeError::InvalidConfig`]; an empty tensor may have any pointer.
    ///
    /// # Safety
    ///
    /// The caller guarantees, for as long as `owner` has not been dropped:
    /// - `ptr` is valid for reads of the tensor's bytes, a single allocation, in host memory;
    /// - nothing writes those bytes (no mutable alias exists while this value lives);
    /// - dropping `owner` (on any thread) is what may release the memory, and nothing else
    ///   releases it earlier.
    pub unsafe fn from_raw_parts(
        dtype: DType,
        shape: Vec<usize>,
        ptr: *const u8,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Result<BorrowedHostTensor> {
        let numel: usize = shape.iter().product();
        let len_bytes = numel
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| MoeError::shape("borrowed tensor", "a size that fits in memory", &shape))?;
        let ptr = if len_bytes == 0 {
            // Nothing is ever read; a dangling, aligned pointer keeps the slice accessors sound.
            NonNull::<u64>::dangling().cast::<u8>()
        } else {
            let p =
                NonNull::new(ptr.cast_mut()).ok_or_else(|| MoeError::config("borrowed tensor", "null data pointer"))?;
            if !(p.as_ptr() as usize).is_multiple_of(dtype.size_in_bytes()) {
                return Err(MoeError::config(
                    "borrowed tensor",
                    format!("data pointer {p:p} is not aligned to {dtype} elements"),
                ));
            }
            p
        };
        Ok(BorrowedHostTensor {
            dtype,
            shape,
            ptr,
            len_bytes,
            _owner: owner,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Address of the first element (the borrowed memory itself, for zero-copy checks and
    /// for handing the memory back out).
    pub fn data_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The elements as little-endian bytes (host memory of the platforms this builds for).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `from_raw_parts`' contract: `len_bytes` readable, immutable bytes at `ptr`
        // for as long as `self` (and so `_owner`) lives; empty tensors use a dangling pointer
        // with length 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len_bytes) }
    }

    /// The elements of an f32 tensor, borrowed.
    pub fn as_f32(&self, what: &str) -> Result<&[f32]> {
        self.expect_dtype(what, DType::F32)?;
        // SAFETY: dtype is f32, so `len_bytes` = 4 * numel; `from_raw_parts` checked 4-byte
        // alignment; the bytes are valid and immutable while `self` lives (its contract).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<f32>(), self.numel()) })
    }

    /// Refuses any dtype but `dtype`, naming the tensor.
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

    /// Refuses any shape but `shape`, naming the tensor.
    pub fn expect_shape(&self, what: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(MoeError::shape(what, format!("{shape:?}"), &self.shape));
        }
        Ok(())
    }

    /// A byte view that borrows the memory (no copy): what [`WeightSource::get`] serves.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            dtype: self.dtype,
            shape: self.shape.clone(),
            data: Cow::Borrowed(self.as_bytes()),
        }
    }

    /// An owned [`Tensor`] with the same dtype, shape and values: one copy, for the APIs
    /// that take owned host storage (the layer's `forward`).
    pub fn to_tensor(&self, what: &str) -> Result<Tensor> {
        self.view().to_tensor(what)
    }
}

/// Weights by canonical name, each borrowed from its owner: loading reads the owners'
/// memory in place (the layer then lays weights out in its own format, as from a file).
#[derive(Debug, Default)]
pub struct BorrowedWeights {
    tensors: BTreeMap<String, BorrowedHostTensor>,
}

impl BorrowedWeights {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: BorrowedHostTensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn tensor(&self, name: &str) -> Option<&BorrowedHostTensor> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl WeightSource for BorrowedWeights {
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        Ok(self.tensors.get(name).map(BorrowedHostTensor::view))
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn describe(&self) -> String {
        "borrowed memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Owner that records its drop, so the tests see the borrow release its memory.
    struct Owner {
        data: Vec<f32>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn borrowed(values: &[f32], shape: Vec<usize>) -> (BorrowedHostTensor, *const u8, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let owner = Box::new(Owner {
            data: values.to_vec(),
            dropped: dropped.clone(),
        });
        let ptr = owner.data.as_ptr().cast::<u8>();
        // SAFETY: `ptr` points into the owner's vector, which moves with the box (its heap
        // buffer stays put) and is never written while the borrow lives.
        let t = unsafe { BorrowedHostTensor::from_raw_parts(DType::F32, shape, ptr, owner) }.unwrap();
        (t, ptr, dropped)
    }

    #[test]
    fn views_borrow_the_owner_memory_and_drop_releases_it() {
        let (t, ptr, dropped) = borrowed(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2, 3]);
        assert_eq!(t.data_ptr(), ptr);
        assert_eq!(t.as_f32("t").unwrap().as_ptr().cast::<u8>(), ptr);
        let v = t.view();
        assert!(matches!(v.data, Cow::Borrowed(b) if b.as_ptr() == ptr));
        assert_eq!(v.to_f32_vec("t").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let owned = t.to_tensor("t").unwrap();
        assert_eq!(owned.shape(), &[2, 3]);
        assert_eq!(owned.as_f32("o").unwrap(), t.as_f32("t").unwrap());
        assert!(!dropped.load(Ordering::SeqCst));
        drop(t);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn refuses_null_misaligned_and_wrong_dtype() {
        let bytes = [0u8; 16];
        // SAFETY: null is refused before any read.
        let null = unsafe { BorrowedHostTensor::from_raw_parts(DType::F32, vec![2], std::ptr::null(), Box::new(())) };
        assert!(null.unwrap_err().to_string().contains("null"));
        let odd = bytes
            .as_ptr()
            .wrapping_add(usize::from((bytes.as_ptr() as usize).is_multiple_of(4)));
        // SAFETY: a misaligned pointer is refused before any read.
        let mis = unsafe { BorrowedHostTensor::from_raw_parts(DType::F32, vec![2], odd, Box::new(())) };
        assert!(mis.unwrap_err().to_string().contains("aligned"));
        let (t, _, _) = borrowed(&[1.0], vec![1]);
        assert!(t.expect_dtype("x", DType::BF16).is_err());
        assert!(t.expect_shape("x", &[2]).is_err());
        // SAFETY: an empty tensor reads nothing, whatever the pointer.
        let empty =
            unsafe { BorrowedHostTensor::from_raw_parts(DType::BF16, vec![0, 4], std::ptr::null(), Box::new(())) };
        assert_eq!(empty.unwrap().as_bytes().len(), 0);
    }

    #[test]
    fn weight_source_serves_borrowed_views() {
        let (t, ptr, _) = borrowed(&[0.5; 4], vec![2, 2]);
        let mut w = BorrowedWeights::new();
        w.insert("0.w1.weight", t);
        let v = w.get("0.w1.weight").unwrap().unwrap();
        assert!(matches!(v.data, Cow::Borrowed(b) if b.as_ptr() == ptr));
        assert!(w.get("0.w2.weight").unwrap().is_none());
        assert_eq!(w.names(), vec!["0.w1.weight".to_string()]);
    }
}
