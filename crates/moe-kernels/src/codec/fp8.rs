//! FP8 E4M3FN: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, as in the OCP 8-bit
//! floating point specification (OFP8) and NVIDIA's `e4m3`, ml_dtypes' `float8_e4m3fn` and
//! torch's `float8_e4m3fn`.
//!
//! - No infinities: exponent 1111 is an ordinary binade except for mantissa 111, so the largest
//!   finite value is `1.75 * 2^8 = 448` (code 0x7E).
//! - NaN is `S.1111.111` only (0x7F and 0xFF); the encoders produce 0x7F with the input's sign.
//! - Subnormals (exponent 0000) are multiples of `2^-9`, up to `7 * 2^-9`; the smallest normal
//!   is `2^-6`.
//!
//! Two encoders, both round to nearest, ties to even, and differ only past the range:
//! - [`f32_to_e4m3_sat`] saturates finite overflow and ±inf to ±448. Quantizers do this
//!   (TensorRT-LLM, ModelOpt: `(x / scale).clamp(-448, 448)` before the cast), since a scaled
//!   weight or activation just past the range must not become NaN.
//! - [`f32_to_e4m3`] maps every value whose rounding leaves the range (|x| > 464, the midpoint
//!   between 448 and the would-be next value 480, and ±inf) to NaN, like torch's
//!   `.to(torch.float8_e4m3fn)` and ml_dtypes' cast; the tests check it against ml_dtypes bit
//!   for bit. |x| = 464 exactly ties to the even code 0x7E (448) in both.

use super::{CodecError, check_len, round_to_minifloat};

/// Largest finite E4M3FN value.
pub const E4M3_MAX: f32 = 448.0;
/// Code of +448 (OR 0x80 for -448).
pub const E4M3_MAX_CODE: u8 = 0x7E;
/// The NaN code the encoders produce (OR 0x80 for the negative NaN).
pub const E4M3_NAN: u8 = 0x7F;

/// Decodes one E4M3FN code exactly (every E4M3FN value is an f32).
///
/// 0x7F and 0xFF decode to a quiet NaN carrying the code's sign; ±0 keep their sign.
pub const fn e4m3_to_f32(code: u8) -> f32 {
    let sign = ((code & 0x80) as u32) << 24;
    let exp = ((code >> 3) & 0x0F) as u32;
    let man = (code & 0x07) as u32;
    let magnitude = if exp == 0x0F && man == 0x07 {
        0x7FC0_0000
    } else if exp == 0 {
        if man == 0 {
            0
        } else {
            // Subnormal: man * 2^-9. Normalise: with its top set bit at position p (0..=2) the
            // value is 2^(p - 9) * 1.f, so the f32 exponent field is p - 9 + 127.
            let p = 31 - man.leading_zeros();
            ((p + 118) << 23) | ((man ^ (1 << p)) << (23 - p))
        }
    } else {
        // Normal: re-bias the exponent from 7 to 127 and widen the mantissa from 3 to 23 bits.
        ((exp + 120) << 23) | (man << 20)
    };
    f32::from_bits(sign | magnitude)
}

const fn build_lut() -> [f32; 256] {
    let mut lut = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        lut[i] = e4m3_to_f32(i as u8);
        i += 1;
    }
    lut
}

/// Every code's value, indexed by the code: the fast decode of the kernels' inner loops
/// (one load instead of the bit assembly of [`e4m3_to_f32`]; built at compile time).
pub static E4M3_TO_F32: [f32; 256] = build_lut();

/// Decodes one code through [`E4M3_TO_F32`]; identical results to [`e4m3_to_f32`].
#[inline]
pub fn e4m3_to_f32_lut(code: u8) -> f32 {
    E4M3_TO_F32[code as usize]
}

/// Shared body of both encoders: `saturate` picks ±448 or NaN for values past the range.
const fn encode(x: f32, saturate: bool) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    let overflow = if saturate { E4M3_MAX_CODE } else { E4M3_NAN };
    if abs > 0x7F80_0000 {
        return sign | E4M3_NAN;
    }
    if abs == 0x7F80_0000 {
        return sign | overflow;
    }
    // Rounded magnitude code; 0x7F (the NaN slot) or more means the rounding left the range.
    let code = round_to_minifloat(abs, 3, 7);
    if code > E4M3_MAX_CODE as u32 {
        sign | overflow
    } else {
        sign | code as u8
    }
}

/// Encodes with round to nearest even and saturation: finite values past ±448 and ±inf become
/// ±448; NaN becomes NaN (0x7F with the input's sign). Values under half the smallest subnormal
/// (|x| <= 2^-10) become zero with the input's sign.
pub const fn f32_to_e4m3_sat(x: f32) -> u8 {
    encode(x, true)
}

/// Encodes with round to nearest even, without saturation: values that round past ±448
/// (|x| > 464) and ±inf become NaN with the input's sign, as torch and ml_dtypes casts do.
/// Everything else is as [`f32_to_e4m3_sat`].
pub const fn f32_to_e4m3(x: f32) -> u8 {
    encode(x, false)
}

/// Decodes `codes` into `out` (same length) through the lookup table.
pub fn decode_e4m3(codes: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
    check_len("out", codes.len(), out.len())?;
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = E4M3_TO_F32[c as usize];
    }
    Ok(())
}

/// Quantizes `x / scale` into `out` (same length) with [`f32_to_e4m3_sat`]: the per-tensor
/// quantizer step with `scale = amax / 448`, dividing as the torch quantizers (ModelOpt) do, so a
/// tensor quantized here matches theirs bit for bit. A zero or NaN scale gives NaN/±448 codes,
/// never a panic.
pub fn quantize_e4m3_sat(x: &[f32], scale: f32, out: &mut [u8]) -> Result<(), CodecError> {
    check_len("out", x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f32_to_e4m3_sat(v / scale);
    }
    Ok(())
}
