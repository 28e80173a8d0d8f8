//! Bit-exact codecs of the number formats quantized experts are stored in.
//!
//! - [`fp8`]: FP8 E4M3FN (OCP FP8 / NVIDIA `e4m3`): decode, round-to-nearest-even encode in a
//!   saturating (quantizer) and a NaN-on-overflow (torch / ml_dtypes cast) flavour.
//! - [`fp4`]: FP4 E2M1 (the element of NVFP4 and MXFP4): decode, saturating encode, nibble packing.
//! - [`e8m0`]: UE8M0, the power-of-two scale of the OCP MX formats: decode, the round-up and
//!   round-to-nearest encoders, and the MX shared-exponent rule.
//! - [`int`]: symmetric per-channel INT8 and group-wise INT4 (signed, or unsigned with zero point).
//!
//! Every function takes every input value: no bit pattern or float (NaN, infinities, subnormals)
//! panics; what each one maps to is part of each function's documentation. Shape mismatches in
//! the slice helpers are reported as [`CodecError`], never by panicking.
//!
//! The float encoders work on the f32 bit pattern with integer arithmetic only, so the result
//! does not depend on the FPU's rounding mode or flush-to-zero flags, and the tests check them
//! against ml_dtypes bit for bit (tables under `tables/`, produced by `tables/gen_tables.py`).

pub mod e8m0;
pub mod fp4;
pub mod fp8;
pub mod int;

#[cfg(test)]
mod tests;

use std::fmt;

/// A slice helper was given shapes that do not fit together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// `what` has `got` elements where the shape asks for `expected`.
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A shape parameter is unusable (zero group size, a dimension that does not divide...).
    Shape(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Length { what, expected, got } => {
                write!(f, "`{what}` has {got} elements, expected {expected}")
            }
            CodecError::Shape(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CodecError {}

/// Checks that `what` holds `expected` elements.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), CodecError> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::Length { what, expected, got })
    }
}

/// `x >> s` rounded to nearest, ties to even, for `1 <= s <= 31`.
///
/// The bits shifted out are compared with half a unit of the kept part; on a tie the kept
/// part is rounded to an even value, the IEEE 754 default that every format here uses.
pub(crate) const fn shift_right_rne(x: u32, s: u32) -> u32 {
    let q = x >> s;
    let rem = x & ((1u32 << s) - 1);
    let half = 1u32 << (s - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// Rounds a finite, non-negative f32 (given as bits, sign cleared) to a binary minifloat with
/// `man` mantissa bits, exponent bias `bias`, subnormals and no upper bound, round to nearest
/// even; returns the magnitude code `exponent << man | mantissa` (which may exceed the format's
/// largest code: callers decide between saturation and NaN).
///
/// Normal targets keep the top `man` mantissa bits of the f32 pattern; a carry out of the
/// mantissa correctly bumps the exponent because the fields are adjacent. Subnormal targets are
/// multiples of `2^(1 - bias - man)`: the f32 significand is shifted to that unit, so the largest
/// subnormal can round up into the smallest normal code, again by carry.
pub(crate) const fn round_to_minifloat(abs: u32, man: u32, bias: u32) -> u32 {
    let f32_exp = abs >> 23;
    // Smallest f32 exponent field of a value that is normal in the target format.
    let min_normal_field = 127 + 1 - bias;
    if f32_exp >= min_normal_field {
        shift_right_rne(abs, 23 - man) - ((127 - bias) << man)
    } else {
        // f32 subnormals have an exponent field of 0 but scale like field 1, without the
        // implicit leading bit.
        let (sig, e) = if f32_exp == 0 {
            (abs, 1)
        } else {
            ((abs & 0x007F_FFFF) | 0x0080_0000, f32_exp)
        };
        // value = sig * 2^(e - 150); in units of 2^(1 - bias - man) that is sig >> shift.
        let shift = 151 - bias - man - e;
        // sig < 2^24, so for shift >= 25 the value is under half a unit and rounds to zero.
        if shift >= 25 { 0 } else { shift_right_rne(sig, shift) }
    }
}

/// Packs 4-bit codes two per byte, the first code of each pair in the LOW nibble (the layout of
/// NVFP4/MXFP4 tensors in ModelOpt and OCP MX checkpoints, and of the INT4 helpers here).
///
/// Only the low 4 bits of each code are used; an odd count leaves the last byte's high
/// nibble 0.
pub fn pack_nibbles(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|pair| {
            let lo = pair[0] & 0x0F;
            let hi = pair.get(1).map_or(0, |c| c & 0x0F);
            lo | (hi << 4)
        })
        .collect()
}

/// Unpacks every nibble of `packed`, low nibble first: `2 * packed.len()` codes in `0..16`
/// (truncate to the element count when it is odd).
pub fn unpack_nibbles(packed: &[u8]) -> Vec<u8> {
    packed.iter().flat_map(|&b| [b & 0x0F, b >> 4]).collect()
}
