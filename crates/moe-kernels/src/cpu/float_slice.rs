//! Borrowed host slices of the float types activations and unquantized weights use
//! (f32, f16, bf16), and their widening to f32.
//!
//! Kernels take weights in their stored dtype and widen small pieces on the fly, so a bf16
//! layer never holds an f32 copy of all its experts.

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use moe_core::{DType, HostStorage, MoeError, Result, Tensor};

/// A borrowed run of f32, f16 or bf16 elements.
#[derive(Clone, Copy, Debug)]
pub enum FloatSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl<'a> FloatSlice<'a> {
    /// The elements of a host float tensor; `what` names the tensor in errors.
    pub fn from_tensor(t: &'a Tensor, what: &str) -> Result<FloatSlice<'a>> {
        match t.host(what)? {
            HostStorage::F32(v) => Ok(FloatSlice::F32(v)),
            HostStorage::F16(v) => Ok(FloatSlice::F16(v)),
            HostStorage::BF16(v) => Ok(FloatSlice::BF16(v)),
            _ => Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "f32, f16 or bf16".into(),
                actual: t.dtype().to_string(),
            }),
        }
    }

    /// Element type of the slice.
    pub fn dtype(&self) -> DType {
        match self {
            FloatSlice::F32(_) => DType::F32,
            FloatSlice::F16(_) => DType::F16,
            FloatSlice::BF16(_) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            FloatSlice::F32(v) => v.len(),
            FloatSlice::F16(v) => v.len(),
            FloatSlice::BF16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sub-slice `range`, or `None` when it does not fit.
    pub fn get(&self, range: Range<usize>) -> Option<FloatSlice<'a>> {
        Some(match *self {
            FloatSlice::F32(v) => FloatSlice::F32(v.get(range)?),
            FloatSlice::F16(v) => FloatSlice::F16(v.get(range)?),
            FloatSlice::BF16(v) => FloatSlice::BF16(v.get(range)?),
        })
    }

    /// The `index`-th of equal chunks of `chunk_len` elements (one slot of a `[S, ...]`
    /// tensor), or a shape error naming `what`.
    pub fn chunk(&self, what: &str, index: usize, chunk_len: usize) -> Result<FloatSlice<'a>> {
        let start = index.checked_mul(chunk_len);
        start
            .and_then(|s| self.get(s..s.checked_add(chunk_len)?))
            .ok_or_else(|| {
                MoeError::shape(
                    what,
                    format!("at least {} chunks of {chunk_len}", index + 1),
                    &[self.len()],
                )
            })
    }

    /// Element `i` widened to f32 (panics when out of range, like slice indexing).
    #[inline]
    pub fn at(&self, i: usize) -> f32 {
        match self {
            FloatSlice::F32(v) => v[i],
            FloatSlice::F16(v) => v[i].to_f32(),
            FloatSlice::BF16(v) => v[i].to_f32(),
        }
    }

    /// Widens elements `start..start + out.len()` into `out` (vectorized by `half` where the
    /// CPU has conversion instructions).
    pub fn widen_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let range = start..start + out.len();
        let src = self
            .get(range.clone())
            .ok_or_else(|| MoeError::shape("widen_into", format!("elements {range:?}"), &[self.len()]))?;
        match src {
            FloatSlice::F32(v) => out.copy_from_slice(v),
            FloatSlice::F16(v) => v.convert_to_f32_slice(out),
            FloatSlice::BF16(v) => widen_bf16(v, out),
        }
        Ok(())
    }
}

/// bf16 -> f32 is exact: the bf16 bits are the top half of the f32 bits. Written as a shift
/// (rather than `half`'s per-element conversion, which branches on NaN) so it vectorizes.
fn widen_bf16(src: &[bf16], out: &mut [f32]) {
    for (d, s) in out.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_and_chunk_bf16() {
        let t = Tensor::from_f32_as(DType::BF16, vec![2, 3], &[1., 2., 3., 4., 5., 6.5]).unwrap();
        let s = FloatSlice::from_tensor(&t, "t").unwrap();
        assert_eq!(s.dtype(), DType::BF16);
        let second = s.chunk("t", 1, 3).unwrap();
        let mut out = [0.0; 3];
        second.widen_into(0, &mut out).unwrap();
        assert_eq!(out, [4., 5., 6.5]);
        assert_eq!(s.at(2), 3.0);
        assert!(s.chunk("t", 2, 3).is_err());
        assert!(s.widen_into(5, &mut out).is_err());
    }

    #[test]
    fn bf16_widening_is_exact_for_every_bit_pattern() {
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let mut out = vec![0.0; all.len()];
        FloatSlice::BF16(&all).widen_into(0, &mut out).unwrap();
        for (b, f) in all.iter().zip(&out) {
            let want = b.to_f32();
            assert!(want.to_bits() == f.to_bits() || (want.is_nan() && f.is_nan()), "{b:?}");
        }
    }

    #[test]
    fn refuses_integer_tensors() {
        let t = Tensor::from_i32(vec![1], vec![3]).unwrap();
        assert!(matches!(
            FloatSlice::from_tensor(&t, "ids"),
            Err(MoeError::DTypeMismatch { .. })
        ));
    }
}
