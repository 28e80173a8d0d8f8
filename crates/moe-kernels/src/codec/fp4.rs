//! FP4 E2M1: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit, the element type of NVFP4
//! and of OCP MXFP4 (ml_dtypes' `float4_e2m1fn`).
//!
//! The 16 codes are ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} (code = `S.EE.M`; exponent 00 is the subnormal
//! binade holding 0 and 0.5). There is no infinity and no NaN.
//!
//! Encoding rounds to nearest, ties to even (so 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2,
//! 2.5 -> 2, 3.5 -> 4, 5 -> 4), keeps the sign of values that round to zero, and saturates:
//! finite values past ±6 and ±inf become ±6 (what ml_dtypes' cast and NVIDIA's
//! `cvt.rn.satfinite.e2m1x2` do; there is nothing else to map them to).
//!
//! NaN has no code. [`f32_to_e2m1`] maps every NaN to +0 (code 0): a NaN element then
//! contributes nothing to a dot product. ml_dtypes 0.6.0 maps NaN to a zero whose sign is the
//! inverse of the NaN's sign bit (its NaN stand-in is -0, then the input sign is applied);
//! [`f32_to_e2m1_ml_dtypes`] reproduces that exactly, for bit-for-bit comparisons.
//!
//! Two codes are packed per byte, the first in the LOW nibble ([`pack_fp4`], [`unpack_fp4`]).

use super::{CodecError, check_len, pack_nibbles, round_to_minifloat, unpack_nibbles};

/// Largest finite E2M1 value.
pub const E2M1_MAX: f32 = 6.0;
/// Code of +6 (OR 0x8 for -6).
pub const E2M1_MAX_CODE: u8 = 0x7;

/// Every code's value, indexed by the code (0..16).
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Decodes one code; only the low nibble is read (the high nibble of a packed byte is the
/// other element, not part of this one).
pub const fn e2m1_to_f32(code: u8) -> f32 {
    E2M1_VALUES[(code & 0x0F) as usize]
}

/// Encodes with round to nearest even and saturation to ±6; NaN -> +0 (see the module doc).
pub const fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() { 0 } else { encode_non_nan(x) }
}

/// [`f32_to_e2m1`] except for NaN, which becomes ml_dtypes 0.6.0's result: -0 (0x8) for a NaN
/// with the sign bit clear, +0 (0x0) for one with it set.
pub const fn f32_to_e2m1_ml_dtypes(x: f32) -> u8 {
    if x.is_nan() {
        if x.is_sign_negative() { 0x0 } else { 0x8 }
    } else {
        encode_non_nan(x)
    }
}

const fn encode_non_nan(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 28) & 0x8) as u8;
    // ±inf (0x7F80_0000) rounds to a huge code like any other overflow, so it saturates too.
    let code = round_to_minifloat(bits & 0x7FFF_FFFF, 1, 1);
    let code = if code > E2M1_MAX_CODE as u32 {
        E2M1_MAX_CODE
    } else {
        code as u8
    };
    sign | code
}

/// Packs codes two per byte, first code in the low nibble; an odd count leaves the last high
/// nibble 0 (+0). Bits above the nibble of each code are ignored.
pub fn pack_fp4(codes: &[u8]) -> Vec<u8> {
    pack_nibbles(codes)
}

/// Unpacks `2 * packed.len()` codes, low nibble first (truncate for an odd element count).
pub fn unpack_fp4(packed: &[u8]) -> Vec<u8> {
    unpack_nibbles(packed)
}

/// Decodes packed codes into `out`: `packed` must hold exactly `out.len().div_ceil(2)` bytes
/// (an odd `out.len()` leaves the last high nibble unread).
pub fn decode_fp4_packed(packed: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_len("packed", out.len().div_ceil(2), packed.len())?;
    for (pair, &b) in out.chunks_mut(2).zip(packed) {
        pair[0] = E2M1_VALUES[(b & 0x0F) as usize];
        if let Some(hi) = pair.get_mut(1) {
            *hi = E2M1_VALUES[(b >> 4) as usize];
        }
    }
    Ok(())
}

/// Encodes `x / scale` with [`f32_to_e2m1`] and packs it, low nibble first: the element step of
/// an NVFP4/MXFP4 block whose scale the caller chose (MX: [`super::e8m0::e8m0_to_f32`] of
/// the shared exponent). Returns `x.len().div_ceil(2)` bytes.
pub fn quantize_fp4_packed(x: &[f32], scale: f32) -> Vec<u8> {
    x.chunks(2)
        .map(|pair| {
            let lo = f32_to_e2m1(pair[0] / scale);
            let hi = pair.get(1).map_or(0, |&v| f32_to_e2m1(v / scale));
            lo | (hi << 4)
        })
        .collect()
}
