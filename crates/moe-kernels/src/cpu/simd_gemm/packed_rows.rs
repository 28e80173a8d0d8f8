//! The packed formats (INT4 groups, NVFP4, MXFP4, INT8 channels) as the few-rows kernels of
//! `packed.rs` read them: which matrices they take, how a row's bytes are laid out, and the
//! per-row scales of a row group gathered once before the kernel runs.
//!
//! The kernels decode codes to their exact unscaled values in registers (integers, or E2M1
//! values) and scale each scale group's partial dot products once, where
//! [`WeightSlice::widen_into`] multiplies every weight. That gives the reference's NaN and
//! infinity patterns only when no weight `code * scale` overflows and no scale is NaN (then
//! `a * (q * s)` and `(a * q) * s` are both NaN exactly when `a` is NaN, or `a` is infinite
//! and `q` or `s` is zero, and infinite with the same sign otherwise); [`Packed::gather`]
//! checks that per row group, and a group that fails it is decoded by `widen_into` instead.
//! INT4 also folds its zero point out of the sums with the activations' sums, which holds
//! only for finite activations: a call with any other takes the widening path.

use super::super::weight_slice::{MXFP4_BLOCK, NVFP4_BLOCK, QuantMatrix};
use super::Isa;
use crate::codec::e8m0::e8m0_to_f32;
use crate::codec::fp8::E4M3_TO_F32;

/// The decode of a kernel instance (a const generic, so each format gets its own loop).
pub(super) const INT4: u8 = 0;
/// INT4 with zero points (unsigned nibbles minus the group's zero point).
pub(super) const INT4_ZP: u8 = 1;
/// E2M1 codes of NVFP4 and MXFP4 (they differ only in how the scale is stored).
pub(super) const FP4: u8 = 2;
pub(super) const INT8: u8 = 3;

/// A packed `[n, k]` matrix the few-rows kernels can read.
#[derive(Clone, Copy)]
pub(super) enum Packed<'a> {
    Int4 {
        packed: &'a [u8],
        scales: &'a [f32],
        zeros: Option<&'a [u8]>,
        group: usize,
    },
    Nvfp4 {
        packed: &'a [u8],
        block_scales: &'a [u8],
        global: f32,
    },
    Mxfp4 {
        packed: &'a [u8],
        scales: &'a [u8],
    },
    Int8 {
        codes: &'a [u8],
        scales: &'a [f32],
    },
}

impl<'a> Packed<'a> {
    /// The kernels' view of `q` (`[n, k]`) for chunks of `chunk` weights (`8 x LANES`), or
    /// `None` for what they don't take: FP8 (it has its own kernel), a `k` that is not whole
    /// chunks for a 4-bit format, and scale groups whose lanes would straddle two groups
    /// (a group not a multiple of 8, or neither a divisor nor a multiple of the chunk).
    pub(super) fn from_matrix(q: QuantMatrix<'a>, k: usize, chunk: usize) -> Option<Self> {
        let lanes_fit = |group: usize| {
            k.is_multiple_of(chunk)
                && group.is_multiple_of(8)
                && (chunk.is_multiple_of(group) || group.is_multiple_of(chunk))
        };
        match q {
            QuantMatrix::Int4Group {
                packed,
                scales,
                zeros,
                group,
            } if lanes_fit(group) => Some(Packed::Int4 {
                packed,
                scales,
                zeros,
                group,
            }),
            QuantMatrix::Nvfp4 {
                packed,
                block_scales,
                global,
            } if lanes_fit(NVFP4_BLOCK) => Some(Packed::Nvfp4 {
                packed,
                block_scales,
                global,
            }),
            QuantMatrix::Mxfp4 { packed, scales } if lanes_fit(MXFP4_BLOCK) => Some(Packed::Mxfp4 { packed, scales }),
            QuantMatrix::Int8Channel { codes, scales } => Some(Packed::Int8 { codes, scales }),
            _ => None,
        }
    }

    /// Which kernel decodes it.
    pub(super) fn fmt(&self) -> u8 {
        match self {
            Packed::Int4 { zeros: None, .. } => INT4,
            Packed::Int4 { zeros: Some(_), .. } => INT4_ZP,
            Packed::Nvfp4 { .. } | Packed::Mxfp4 { .. } => FP4,
            Packed::Int8 { .. } => INT8,
        }
    }

    /// Whether the kernel needs finite activations and their per-chunk lane sums: INT4 folds
    /// its zero point out of the sums with them (`Inf - Inf` would turn an infinite output
    /// into NaN), so a call with a non-finite activation takes the widening path.
    pub(super) fn sums_activations(&self) -> bool {
        matches!(self, Packed::Int4 { .. })
    }

    /// Whether two codes share a byte (then `A` is read in `permute_stride8` order).
    pub(super) fn four_bit(&self) -> bool {
        self.fmt() != INT8
    }

    /// The codes, row-major, and the bytes of one row.
    pub(super) fn codes(&self, k: usize) -> (&'a [u8], usize) {
        match *self {
            Packed::Int4 { packed, .. } | Packed::Nvfp4 { packed, .. } | Packed::Mxfp4 { packed, .. } => {
                (packed, k / 2)
            }
            Packed::Int8 { codes, .. } => (codes, k),
        }
    }

    /// Weights per scale (a whole row for INT8).
    pub(super) fn period(&self, k: usize) -> usize {
        match *self {
            Packed::Int4 { group, .. } => group,
            Packed::Nvfp4 { .. } => NVFP4_BLOCK,
            Packed::Mxfp4 { .. } => MXFP4_BLOCK,
            Packed::Int8 { .. } => k,
        }
    }

    /// Largest `|code value|`: a scale times it must stay finite.
    fn largest_code(&self) -> f32 {
        match self {
            Packed::Int4 { zeros: None, .. } => 8.0,
            // `q - z` with `z` a byte.
            Packed::Int4 { zeros: Some(_), .. } => 255.0,
            Packed::Nvfp4 { .. } | Packed::Mxfp4 { .. } => 6.0,
            Packed::Int8 { .. } => 128.0,
        }
    }

    /// Writes the scales of rows `r0..r0 + nr` into `s[j * per_row + g]` (`per_row = k / period`)
    /// and, for INT4 with zero points, `1 + z / 16` into `z` the same way; returns
    /// whether every scale keeps the reference's semantics (see the module doc). `s` and `z`
    /// hold `nr * per_row`; `r0 + nr <= n` of a validated `[n, k]` matrix.
    ///
    /// # Safety
    /// `isa` was detected on this CPU.
    pub(super) unsafe fn gather(&self, isa: Isa, r0: usize, nr: usize, k: usize, s: &mut [f32], z: &mut [f32]) -> bool {
        let per_row = k / self.period(k);
        let (first, count) = (r0 * per_row, nr * per_row);
        let s = &mut s[..count];
        match *self {
            Packed::Int4 { scales, zeros, .. } => {
                s.copy_from_slice(&scales[first..first + count]);
                // As the kernel takes them, `1 + z / 16` (exact for a byte).
                if let Some(zeros) = zeros {
                    for (d, &q) in z[..count].iter_mut().zip(&zeros[first..first + count]) {
                        *d = 1.0 + f32::from(q) / 16.0;
                    }
                }
            }
            Packed::Nvfp4 {
                block_scales, global, ..
            } => {
                // One E4M3 scale per 16 weights: decoded in registers (bit-identical to the
                // table times `global`), or this loop costs a third of the kernel's time.
                let q = &block_scales[first..first + count];
                // SAFETY: the caller guarantees the ISA; `q` and `s` have the same length.
                let done = unsafe { super::arch::decode_e4m3(isa, q, global, s) };
                for (d, &q) in s[done..].iter_mut().zip(&q[done..]) {
                    *d = E4M3_TO_F32[q as usize] * global;
                }
            }
            Packed::Mxfp4 { scales, .. } => {
                for (d, &q) in s.iter_mut().zip(&scales[first..first + count]) {
                    *d = e8m0_to_f32(q);
                }
            }
            Packed::Int8 { scales, .. } => s.copy_from_slice(&scales[r0..r0 + nr]),
        }
        let big = self.largest_code();
        // No early exit: a fold the compiler vectorizes (the check runs once per row group).
        s.iter().fold(true, |ok, &v| ok & (v * big).is_finite())
    }
}
