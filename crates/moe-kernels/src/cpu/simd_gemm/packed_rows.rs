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
//! The 4-bit kernels take the activations as 16-bit integers with a scale per chunk
//! ([`quantize_acts`]), which holds only for finite activations: a call with any other takes
//! the widening path (then NaN and infinity propagate as the reference has them).

use super::super::weight_slice::{MXFP4_BLOCK, NVFP4_BLOCK, QuantMatrix};
use super::Isa;
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

    /// Whether the kernel needs the activations' per-chunk lane sums (INT4 folds its zero
    /// point out of the sums with them).
    pub(super) fn sums_activations(&self) -> bool {
        matches!(self, Packed::Int4 { .. })
    }

    /// Whether two codes share a byte (then `A` is read as [`quantize_acts`] writes it, and
    /// must be finite).
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
    /// and, for INT4 with zero points, the zero points into `z` the same way; returns
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
                if let Some(zeros) = zeros {
                    for (d, &q) in z[..count].iter_mut().zip(&zeros[first..first + count]) {
                        *d = f32::from(q);
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
                // The check below on the codes, which is cheaper: no NaN code, and the
                // largest (448) times `global` times 6 finite (rounding is monotonic).
                if (448.0 * global * 6.0).is_finite() && q.iter().fold(true, |ok, &c| ok & (c & 0x7F != 0x7F)) {
                    return true;
                }
            }
            Packed::Mxfp4 { scales, .. } => {
                // `e8m0_to_f32` without branches, so the loop vectorizes (test
                // `e8m0_select_matches_the_codec`).
                let q = &scales[first..first + count];
                for (d, &q) in s.iter_mut().zip(q) {
                    *d = e8m0_select(q);
                }
                // The check below on the codes, which is cheaper: `6 x 2^125` (byte 0xFC) is
                // finite, `6 x 2^126` is not, 0xFF is NaN.
                if q.iter().fold(0, |m, &c| m.max(c)) <= 0xFC {
                    return true;
                }
            }
            Packed::Int8 { scales, .. } => s.copy_from_slice(&scales[r0..r0 + nr]),
        }
        let big = self.largest_code();
        // No early exit: a fold the compiler vectorizes (the check runs once per row group).
        s.iter().fold(true, |ok, &v| ok & (v * big).is_finite())
    }
}

/// [`crate::codec::e8m0::e8m0_to_f32`] as selects (a byte is the f32 exponent field, but for 0 (2^-127) and NaN).
pub(super) fn e8m0_select(q: u8) -> f32 {
    let bits = u32::from(q) << 23;
    let bits = if q == 0 { 0x0040_0000 } else { bits };
    f32::from_bits(if q == 0xFF { 0x7FC0_0000 } else { bits })
}

/// The 16-bit activations of the 4-bit kernels, written by [`quantize_acts`].
#[derive(Clone, Copy)]
pub(super) struct QuantActs<'a> {
    /// `m` rows of `k`, each chunk of `chunk` in the kernels' order: element `4p + t` of the
    /// chunk at `t x chunk / 4 + p`.
    pub q: &'a [i16],
    /// One per row and chunk (`k / chunk` a row): the value of a step of `q`.
    pub scale: &'a [f32],
    /// INT4: per row, chunk and 32-bit lane (`k / 8` a row), the sum of the lane's 8 values
    /// of `q` (exact in f32).
    pub sums: &'a [f32],
}

/// Quantizes the `m` finite rows of `k` in `a` for the 4-bit kernels (`k` a multiple of
/// `chunk`, which is a multiple of 8): per row and chunk the scale `max |a| / 32767` and
/// `q = round(a / scale)` in the kernels' order (see [`QuantActs`]); the lane sums with `sums`.
/// A chunk of zeros gets scale 0.
pub(super) fn quantize_acts(
    a: &[f32],
    k: usize,
    chunk: usize,
    sums: bool,
    q: &mut Vec<i16>,
    scale: &mut Vec<f32>,
    lane_sums: &mut Vec<f32>,
) {
    q.clear();
    q.resize(a.len(), 0);
    scale.clear();
    scale.resize(a.len() / chunk, 0.0);
    lane_sums.clear();
    if sums {
        lane_sums.resize(a.len() / 8, 0.0);
    }
    let quarter = chunk / 4;
    debug_assert!(k.is_multiple_of(chunk) && chunk <= 128);
    // `y + 1.5 x 2^23 - 1.5 x 2^23` rounds `|y| < 2^22` to the nearest integer (ties to
    // even) in plain f32 arithmetic, which vectorizes (`round_ties_even` may be a call).
    const MAGIC: f32 = 12_582_912.0;
    let mut lin = [0i16; 128];
    for (c, (src, dst)) in a.chunks_exact(chunk).zip(q.chunks_exact_mut(chunk)).enumerate() {
        let max = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if max == 0.0 {
            continue;
        }
        scale[c] = (f64::from(max) / 32767.0) as f32;
        let lin = &mut lin[..chunk];
        if max >= 1.0e-30 {
            // `|a| <= max`: every value rounds into `-32767..=32767`.
            let inv = 32767.0 / max;
            for (d, &x) in lin.iter_mut().zip(src) {
                *d = ((x * inv + MAGIC) - MAGIC) as i16;
            }
        } else {
            // In f64: `32767 / max` overflows f32 for a tiny `max`.
            let inv = 32767.0 / f64::from(max);
            for (d, &x) in lin.iter_mut().zip(src) {
                *d = (f64::from(x) * inv).round_ties_even() as i16;
            }
        }
        for (p, four) in lin.chunks_exact(4).enumerate() {
            for (t, &x) in four.iter().enumerate() {
                dst[t * quarter + p] = x;
            }
        }
        if sums {
            // Lane `l` holds the pairs of words `2l, 2l + 1` of every vector `t`: chunk
            // elements `8l..8l + 8`.
            for (l, eight) in lin.chunks_exact(8).enumerate() {
                let sum: i32 = eight.iter().map(|&x| i32::from(x)).sum();
                lane_sums[c * chunk / 8 + l] = sum as f32;
            }
        }
    }
}
