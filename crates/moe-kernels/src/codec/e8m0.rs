//! UE8M0 (ml_dtypes' `float8_e8m0fnu`): the shared power-of-two scale of the OCP Microscaling
//! (MX) formats, defined with the scale data types of the OCP MX specification v1.0.
//!
//! An 8-bit biased exponent, no sign and no mantissa: byte `b` is `2^(b - 127)` for `b` in
//! `0..=254` (2^-127 ..= 2^127; 2^-127 is an f32 subnormal, still exact) and NaN for `b = 255`.
//! There is no zero, no negative value and no infinity.
//!
//! Encoders, each defined for every f32:
//! - [`e8m0_from_f32_ceil`]: the smallest power of two >= x, saturating at both ends. This is
//!   the rule for scales that must never clip (`scale >= amax / elem_max`): DeepSeek-V3 style
//!   UE8M0 block scales and the MXFP8 recipes that round the scale up.
//! - [`f32_to_e8m0`]: round to nearest, exactly as ml_dtypes' cast (checked bit for bit).
//! - [`mx_scale_exponent`] / [`mx_scale_e8m0`]: the OCP MX v1.0 section 6.3 conversion,
//!   `shared_exp = floor(log2(amax)) - emax_elem`. Note that it rounds log2(amax) DOWN: the
//!   largest element may then exceed the element format's max after scaling, and the spec
//!   has it clamped to the max normal by the element quantizer. So the MX spec rule is not a
//!   round-up; the round-up alternative is `e8m0_from_f32_ceil(amax / elem_max)`.

/// Exponent bias: byte `b` is `2^(b - E8M0_BIAS)`.
pub const E8M0_BIAS: i32 = 127;
/// The NaN byte.
pub const E8M0_NAN: u8 = 0xFF;

/// `emax_elem` of the OCP MX v1.0 element formats (table 1): the exponent of their largest
/// normal value, the `emax_elem` argument of [`mx_scale_exponent`].
pub const EMAX_E4M3: i32 = 8;
/// See [`EMAX_E4M3`].
pub const EMAX_E5M2: i32 = 15;
/// See [`EMAX_E4M3`].
pub const EMAX_E3M2: i32 = 4;
/// See [`EMAX_E4M3`].
pub const EMAX_E2M3: i32 = 2;
/// See [`EMAX_E4M3`] (MXFP4: largest value 6 = 1.5 * 2^2).
pub const EMAX_E2M1: i32 = 2;
/// See [`EMAX_E4M3`] (MXINT8: elements are 1.6 fixed point, largest 1.984375 < 2^1).
pub const EMAX_INT8: i32 = 0;

/// Decodes one byte: `2^(b - 127)`, with `b = 0` giving the f32 subnormal 2^-127 and `b = 255`
/// a quiet NaN.
pub const fn e8m0_to_f32(b: u8) -> f32 {
    match b {
        // 2^-127 is below f32's smallest normal 2^-126: the subnormal with mantissa 0x40_0000.
        0 => f32::from_bits(0x0040_0000),
        E8M0_NAN => f32::from_bits(0x7FC0_0000),
        // The same bias as f32: the byte is the f32 exponent field.
        _ => f32::from_bits((b as u32) << 23),
    }
}

/// The byte of `2^e`, saturated to the representable exponents -127..=127.
pub const fn e8m0_from_exponent(e: i32) -> u8 {
    let e = if e < -E8M0_BIAS {
        -E8M0_BIAS
    } else if e > E8M0_BIAS {
        E8M0_BIAS
    } else {
        e
    };
    (e + E8M0_BIAS) as u8
}

/// `floor(log2(|x|))` exactly, for finite non-zero `x` (subnormals included: -149..=127);
/// `None` for ±0, ±inf and NaN.
pub const fn floor_log2(x: f32) -> Option<i32> {
    let abs = x.to_bits() & 0x7FFF_FFFF;
    let field = (abs >> 23) as i32;
    if abs == 0 || field == 0xFF {
        None
    } else if field == 0 {
        // Subnormal: abs * 2^-149, whose top set bit is at 31 - leading_zeros.
        Some(31 - abs.leading_zeros() as i32 - 149)
    } else {
        Some(field - 127)
    }
}

/// The smallest UE8M0 value >= `x`, saturating: `x <= 2^-127` (zero and negatives included, and
/// -inf) gives 2^-127 (byte 0); `x > 2^127` and +inf give 2^127 (byte 254), the one case where
/// the result is below `x`; NaN gives NaN (255).
pub const fn e8m0_from_f32_ceil(x: f32) -> u8 {
    if x.is_nan() {
        return E8M0_NAN;
    }
    let bits = x.to_bits();
    if bits >> 31 == 1 || bits <= 0x0040_0000 {
        // Negative, -0, +0, or a positive value up to 2^-127.
        return 0;
    }
    let field = bits >> 23;
    if field == 0 {
        // Positive subnormal above 2^-127: 2^-126 is the next power of two.
        return 1;
    }
    // A normal value 2^(field - 127) * 1.m rounds up to the next binade unless m = 0.
    let up = (bits & 0x007F_FFFF != 0) as u32;
    let code = field + up;
    if code > 254 { 254 } else { code as u8 }
}

/// Round to nearest, exactly as ml_dtypes' `float8_e8m0fnu` cast (0.6.0):
/// - NaN, ±inf, ±0 and every negative value -> NaN (255): nothing nearer exists.
/// - A normal `2^e * 1.m` rounds up to `2^(e+1)` iff `1.m >= 1.5`. ml_dtypes rounds the
///   significand to an integer with ties to even; the implicit leading 1 is odd, so the tie 1.5
///   goes up (this is not the geometric midpoint sqrt(2)).
/// - Results past 2^127 (x >= 1.5 * 2^127) -> NaN (255): there is no infinity.
/// - An f32 subnormal is rounded as `k * 2^-126` with k in {0, 1}, ties to even: up to and
///   including 2^-127 it gives byte 0 (2^-127), above 2^-127 byte 1 (2^-126).
pub const fn f32_to_e8m0(x: f32) -> u8 {
    let bits = x.to_bits();
    if x.is_nan() || bits >> 31 == 1 || bits == 0 || bits == 0x7F80_0000 {
        return E8M0_NAN;
    }
    let field = bits >> 23;
    if field == 0 {
        return (bits > 0x0040_0000) as u8;
    }
    let up = (bits & 0x007F_FFFF >= 0x0040_0000) as u32;
    let code = field + up;
    if code > 254 { E8M0_NAN } else { code as u8 }
}

/// The OCP MX v1.0 (section 6.3) shared exponent of a block with absolute maximum `amax` for an
/// element format whose largest normal has exponent `emax_elem`:
/// `floor(log2(amax)) - emax_elem`, computed exactly from the f32 bits.
///
/// - The sign of `amax` is ignored (`|amax|` is used).
/// - `amax = 0` (an all-zero block) gives -127: any scale encodes zeros exactly, and the
///   smallest keeps the decoded block at zero.
/// - Results below -127 are clamped to -127, as the spec's reference implementation does.
/// - `None` for NaN or infinite `amax`, and for results above 127: the spec's scale is NaN.
pub const fn mx_scale_exponent(amax: f32, emax_elem: i32) -> Option<i32> {
    if amax.is_nan() || amax.is_infinite() {
        return None;
    }
    let log2 = match floor_log2(amax) {
        Some(l) => l as i64,
        None => return Some(-E8M0_BIAS), // zero
    };
    // i64: no overflow for any emax_elem.
    let e = log2 - emax_elem as i64;
    if e > E8M0_BIAS as i64 {
        None
    } else if e < -E8M0_BIAS as i64 {
        Some(-E8M0_BIAS)
    } else {
        Some(e as i32)
    }
}

/// [`mx_scale_exponent`] as a UE8M0 byte; `None` becomes NaN (255).
pub const fn mx_scale_e8m0(amax: f32, emax_elem: i32) -> u8 {
    match mx_scale_exponent(amax, emax_elem) {
        Some(e) => (e + E8M0_BIAS) as u8,
        None => E8M0_NAN,
    }
}
