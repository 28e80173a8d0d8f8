//! Tests of the codecs: every code point against the format definitions written out here
//! (independently of the decoders), hand-picked rounding boundaries, and bit-for-bit agreement
//! with ml_dtypes through the tables of `tables/` (see `tables/gen_tables.py`).

use super::e8m0::*;
use super::fp4::*;
use super::fp8::*;
use super::int::*;
use super::{CodecError, pack_nibbles, unpack_nibbles};

/// ml_dtypes reference cases: (input, e4m3, e4m3 of clip(x, ±448), e2m1, e8m0).
const CASES: &[u8] = include_bytes!("tables/ml_dtypes_cases.bin");
/// Digests of the same four conversions over whole chunks of the f32 bit patterns.
const DIGESTS: &[u8] = include_bytes!("tables/exhaustive_digests.bin");

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

struct Case {
    x: f32,
    e4m3: u8,
    e4m3_clip: u8,
    e2m1: u8,
    e8m0: u8,
}

fn cases() -> Vec<Case> {
    assert_eq!(CASES.len() % 8, 0, "the cases table is made of 8-byte records");
    CASES
        .chunks_exact(8)
        .map(|r| Case {
            x: f32::from_bits(u32_at(r, 0)),
            e4m3: r[4],
            e4m3_clip: r[5],
            e2m1: r[6],
            e8m0: r[7],
        })
        .collect()
}

fn next_up(x: f32) -> f32 {
    // Positive finite x only: the next pattern is the next value.
    f32::from_bits(x.to_bits() + 1)
}

fn next_down(x: f32) -> f32 {
    f32::from_bits(x.to_bits() - 1)
}

fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

// ---------------------------------------------------------------------------------------------
// FP8 E4M3FN

/// The E4M3FN definition: (-1)^s * 2^(e-7) * (1 + m/8) for e > 0, 2^-6 * m/8 for e = 0,
/// NaN for e = 15, m = 7.
fn e4m3_reference(code: u8) -> f64 {
    let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((code >> 3) & 0xF);
    let m = f64::from(code & 0x7);
    if e == 15 && m == 7.0 {
        f64::NAN
    } else if e == 0 {
        s * pow2(-6) * (m / 8.0)
    } else {
        s * pow2(e - 7) * (1.0 + m / 8.0)
    }
}

#[test]
fn e4m3_every_code_decodes_to_the_definition() {
    for c in 0..=255u8 {
        let want = e4m3_reference(c);
        let got = e4m3_to_f32(c);
        if want.is_nan() {
            assert!(got.is_nan(), "code {c:#04x}");
            assert_eq!(got.is_sign_negative(), c & 0x80 != 0, "NaN sign of {c:#04x}");
        } else {
            assert_eq!(f64::from(got), want, "code {c:#04x}");
            assert_eq!(got.is_sign_negative(), c & 0x80 != 0, "sign of {c:#04x}");
        }
        assert_eq!(E4M3_TO_F32[c as usize].to_bits(), got.to_bits(), "LUT at {c:#04x}");
        assert_eq!(e4m3_to_f32_lut(c).to_bits(), got.to_bits());
    }
    assert_eq!(e4m3_to_f32(E4M3_MAX_CODE), E4M3_MAX);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
}

#[test]
fn e4m3_every_code_round_trips() {
    for c in 0..=255u8 {
        let v = e4m3_to_f32(c);
        if v.is_nan() {
            // Both NaN codes are canonical already: S.1111.111.
            assert_eq!(c & 0x7F, E4M3_NAN);
            assert_eq!(f32_to_e4m3(v), c);
            assert_eq!(f32_to_e4m3_sat(v), c);
            assert!(e4m3_to_f32(f32_to_e4m3(v)).is_nan());
        } else {
            assert_eq!(f32_to_e4m3(v), c, "non-saturating, code {c:#04x}");
            assert_eq!(f32_to_e4m3_sat(v), c, "saturating, code {c:#04x}");
        }
    }
}

#[test]
fn e4m3_rounding_boundaries() {
    let t = pow2(-10) as f32; // half the smallest subnormal
    // (input, non-saturating, saturating)
    let cases: &[(f32, u8, u8)] = &[
        (0.0, 0x00, 0x00),
        (-0.0, 0x80, 0x80),
        // Tiny values go to zero with their sign.
        (f32::from_bits(1), 0x00, 0x00),
        (-f32::from_bits(1), 0x80, 0x80),
        (1e-30, 0x00, 0x00),
        (-1e-30, 0x80, 0x80),
        (next_down(t), 0x00, 0x00),
        // 2^-10 is the midpoint of 0 and 2^-9: ties to the even code 0.
        (t, 0x00, 0x00),
        (-t, 0x80, 0x80),
        (next_up(t), 0x01, 0x01),
        // Subnormal midpoints: 3, 5, 7 * 2^-10 tie to codes 2, 2, 4.
        (3.0 * t, 0x02, 0x02),
        (next_down(3.0 * t), 0x01, 0x01),
        (5.0 * t, 0x02, 0x02),
        (next_up(5.0 * t), 0x03, 0x03),
        (7.0 * t, 0x04, 0x04),
        // Largest subnormal 7 * 2^-9 vs smallest normal 2^-6: midpoint ties up to 0x08 (even).
        (next_down(15.0 * t), 0x07, 0x07),
        (15.0 * t, 0x08, 0x08),
        (-15.0 * t, 0x88, 0x88),
        (2f32.powi(-6), 0x08, 0x08),
        // Normals: 1.0625 is the midpoint of 1 (0x38) and 1.125 (0x39).
        (1.0, 0x38, 0x38),
        (1.0625, 0x38, 0x38),
        (next_up(1.0625), 0x39, 0x39),
        (1.1875, 0x3A, 0x3A),
        (next_down(1.1875), 0x39, 0x39),
        (-1.0, 0xB8, 0xB8),
        (240.0, 0x77, 0x77),
        (248.0, 0x78, 0x78), // midpoint of 240 (odd 0x77) and 256 (0x78): up
        // Top of the range: 416 (0x7D), 448 (0x7E); 432 ties to 448 (even mantissa 110).
        (416.0, 0x7D, 0x7D),
        (432.0, 0x7E, 0x7E),
        (next_down(432.0), 0x7D, 0x7D),
        (448.0, 0x7E, 0x7E),
        (-448.0, 0xFE, 0xFE),
        // 464 is the midpoint of 448 and the would-be 480: ties to 448 (even); above is out.
        (460.0, 0x7E, 0x7E),
        (next_down(464.0), 0x7E, 0x7E),
        (464.0, 0x7E, 0x7E),
        (next_up(464.0), 0x7F, 0x7E),
        (-next_up(464.0), 0xFF, 0xFE),
        (480.0, 0x7F, 0x7E),
        (500.0, 0x7F, 0x7E),
        (1e30, 0x7F, 0x7E),
        (f32::MAX, 0x7F, 0x7E),
        (f32::MIN, 0xFF, 0xFE),
        (f32::INFINITY, 0x7F, 0x7E),
        (f32::NEG_INFINITY, 0xFF, 0xFE),
        (f32::NAN, 0x7F, 0x7F),
        (-f32::NAN, 0xFF, 0xFF),
        (f32::from_bits(0x7F80_0001), 0x7F, 0x7F), // signalling NaN
    ];
    for &(x, plain, sat) in cases {
        assert_eq!(f32_to_e4m3(x), plain, "f32_to_e4m3({x:e}) [{:#010x}]", x.to_bits());
        assert_eq!(
            f32_to_e4m3_sat(x),
            sat,
            "f32_to_e4m3_sat({x:e}) [{:#010x}]",
            x.to_bits()
        );
    }
}

#[test]
fn e4m3_matches_ml_dtypes() {
    let cases = cases();
    assert!(cases.len() > 5000, "{} cases", cases.len());
    for c in &cases {
        assert_eq!(f32_to_e4m3(c.x), c.e4m3, "{:e} [{:#010x}]", c.x, c.x.to_bits());
        // ModelOpt's recipe, clamp to ±448 then cast, is exactly the saturating encoder.
        assert_eq!(
            f32_to_e4m3_sat(c.x),
            c.e4m3_clip,
            "sat {:e} [{:#010x}]",
            c.x,
            c.x.to_bits()
        );
    }
}

#[test]
fn e4m3_slice_helpers() {
    let codes: Vec<u8> = (0..=255).collect();
    let mut out = vec![0.0; 256];
    decode_e4m3(&codes, &mut out).unwrap();
    assert!(
        out.iter()
            .zip(&codes)
            .all(|(v, &c)| v.to_bits() == e4m3_to_f32(c).to_bits())
    );
    assert_eq!(
        decode_e4m3(&codes, &mut out[..3]),
        Err(CodecError::Length {
            what: "out",
            expected: 256,
            got: 3
        })
    );
    let x = [896.0, -1.0, 0.5, 1e9];
    let mut q = [0u8; 4];
    quantize_e4m3_sat(&x, 2.0, &mut q).unwrap();
    assert_eq!(q, [0x7E, 0xB0, 0x28, 0x7E]);
    assert!(quantize_e4m3_sat(&x, 2.0, &mut q[..1]).is_err());
    // A zero scale is no panic: ±448 for non-zero values, NaN (either sign) for 0 / 0.
    quantize_e4m3_sat(&[1.0, -1.0, 0.0, f32::NAN], 0.0, &mut q).unwrap();
    assert_eq!(q[..2], [0x7E, 0xFE]);
    assert!(q[2..].iter().all(|&c| c & 0x7F == E4M3_NAN));
}

// ---------------------------------------------------------------------------------------------
// FP4 E2M1

/// The E2M1 definition: (-1)^s * 2^(e-1) * (1 + m/2) for e > 0, m/2 for e = 0.
fn e2m1_reference(code: u8) -> f64 {
    let s = if code & 0x8 != 0 { -1.0 } else { 1.0 };
    let e = i32::from((code >> 1) & 0x3);
    let m = f64::from(code & 0x1);
    if e == 0 {
        s * (m / 2.0)
    } else {
        s * pow2(e - 1) * (1.0 + m / 2.0)
    }
}

#[test]
fn e2m1_every_code_decodes_and_round_trips() {
    for c in 0..16u8 {
        let v = e2m1_to_f32(c);
        assert_eq!(f64::from(v), e2m1_reference(c), "code {c:#x}");
        assert_eq!(v.is_sign_negative(), c & 0x8 != 0, "sign of {c:#x}");
        assert_eq!(f32_to_e2m1(v), c, "code {c:#x}");
        assert_eq!(f32_to_e2m1_ml_dtypes(v), c, "code {c:#x}");
        // The high nibble (the neighbouring element of a packed byte) is not read.
        assert_eq!(e2m1_to_f32(c | 0xA0).to_bits(), v.to_bits());
    }
    assert_eq!(E2M1_VALUES[E2M1_MAX_CODE as usize], E2M1_MAX);
}

#[test]
fn e2m1_rounding_boundaries() {
    // (input, code); every midpoint between neighbours ties to the even mantissa.
    let cases: &[(f32, u8)] = &[
        (0.0, 0x0),
        (-0.0, 0x8),
        (0.1, 0x0),
        (-0.1, 0x8),
        (f32::from_bits(1), 0x0),
        (0.25, 0x0),
        (next_up(0.25), 0x1),
        (-0.25, 0x8),
        (0.75, 0x2),
        (next_down(0.75), 0x1),
        (1.25, 0x2),
        (next_up(1.25), 0x3),
        (1.75, 0x4),
        (2.5, 0x4),
        (next_up(2.5), 0x5),
        (3.5, 0x6),
        (next_down(3.5), 0x5),
        (5.0, 0x6),
        (next_up(5.0), 0x7),
        (-5.0, 0xE),
        (6.0, 0x7),
        (7.0, 0x7),
        (8.0, 0x7),
        (1e30, 0x7),
        (f32::MAX, 0x7),
        (f32::INFINITY, 0x7),
        (f32::NEG_INFINITY, 0xF),
        (-100.0, 0xF),
    ];
    for &(x, code) in cases {
        assert_eq!(f32_to_e2m1(x), code, "f32_to_e2m1({x:e})");
        assert_eq!(f32_to_e2m1_ml_dtypes(x), code, "f32_to_e2m1_ml_dtypes({x:e})");
    }
    // NaN: +0 here; ml_dtypes gives the zero of the opposite sign.
    for (nan, ml) in [(f32::NAN, 0x8), (-f32::NAN, 0x0), (f32::from_bits(0x7F80_0001), 0x8)] {
        assert_eq!(f32_to_e2m1(nan), 0x0);
        assert_eq!(f32_to_e2m1_ml_dtypes(nan), ml);
    }
}

#[test]
fn e2m1_matches_ml_dtypes() {
    for c in &cases() {
        assert_eq!(
            f32_to_e2m1_ml_dtypes(c.x),
            c.e2m1,
            "{:e} [{:#010x}]",
            c.x,
            c.x.to_bits()
        );
        let want = if c.x.is_nan() { 0 } else { c.e2m1 };
        assert_eq!(f32_to_e2m1(c.x), want, "{:e} [{:#010x}]", c.x, c.x.to_bits());
    }
}

#[test]
fn fp4_packing_is_low_nibble_first() {
    assert_eq!(pack_fp4(&[0x1, 0x2, 0x3, 0xF]), vec![0x21, 0xF3]);
    // Odd count: the last high nibble is 0; bits above a nibble are ignored.
    assert_eq!(pack_fp4(&[0x7, 0x8, 0xF5]), vec![0x87, 0x05]);
    assert_eq!(pack_fp4(&[]), Vec::<u8>::new());
    assert_eq!(unpack_fp4(&[0x21, 0xF3]), vec![0x1, 0x2, 0x3, 0xF]);
    let codes: Vec<u8> = (0..16).chain((0..16).rev()).collect();
    assert_eq!(unpack_fp4(&pack_fp4(&codes)), codes);
    assert_eq!(unpack_nibbles(&pack_nibbles(&codes[..7]))[..7], codes[..7]);

    let mut out = [0.0f32; 3];
    decode_fp4_packed(&[0x87, 0x05], &mut out).unwrap();
    assert_eq!(out, [6.0, -0.0, 3.0]);
    assert!(out[1].is_sign_negative());
    assert_eq!(
        decode_fp4_packed(&[0x87], &mut out),
        Err(CodecError::Length {
            what: "packed",
            expected: 2,
            got: 1
        })
    );
    // Quantize with a block scale: 12 / 2 = 6 -> 0x7, -1 / 2 -> -0.5 (0x9), 5 / 2 -> 2 (0x4).
    assert_eq!(quantize_fp4_packed(&[12.0, -1.0, 5.0], 2.0), vec![0x97, 0x04]);
}

// ---------------------------------------------------------------------------------------------
// UE8M0

#[test]
fn e8m0_every_byte_decodes_and_round_trips() {
    for b in 0..=255u8 {
        let v = e8m0_to_f32(b);
        if b == 255 {
            assert!(v.is_nan());
            assert_eq!(f32_to_e8m0(v), 255);
            assert_eq!(e8m0_from_f32_ceil(v), 255);
            continue;
        }
        // 2^(b - 127), computed in f64 and narrowed: exact (2^-127 is an f32 subnormal).
        let want = pow2(i32::from(b) - 127);
        assert_eq!(f64::from(v), want, "byte {b}");
        assert_eq!(f32_to_e8m0(v), b, "round-to-nearest of byte {b}");
        assert_eq!(e8m0_from_f32_ceil(v), b, "ceil of byte {b}");
        assert_eq!(floor_log2(v), Some(i32::from(b) - 127));
        assert_eq!(e8m0_from_exponent(i32::from(b) - 127), b);
    }
    assert_eq!(e8m0_from_exponent(-1000), 0);
    assert_eq!(e8m0_from_exponent(i32::MAX), 254);
}

#[test]
fn e8m0_ceil_boundaries() {
    let p = |e: i32| pow2(e) as f32;
    let cases: &[(f32, u8)] = &[
        (1.0, 127),
        (next_up(1.0), 128),
        (next_down(1.0), 127),
        (0.75, 127),
        (0.5, 126),
        (3.0, 129),
        (448.0, 136), // 2^9 = 512 >= 448
        // Bottom: everything up to 2^-127 is 2^-127; negatives and zero too.
        (p(-127), 0),
        (next_up(p(-127)), 1),
        (p(-126), 1),
        (next_up(p(-126)), 2),
        (f32::from_bits(1), 0),
        (0.0, 0),
        (-0.0, 0),
        (-1.0, 0),
        (f32::NEG_INFINITY, 0),
        // Top: saturates at 2^127.
        (p(127), 254),
        (next_down(p(127)), 254),
        (next_up(p(127)), 254),
        (f32::MAX, 254),
        (f32::INFINITY, 254),
        (f32::NAN, 255),
        (-f32::NAN, 255),
    ];
    for &(x, b) in cases {
        assert_eq!(e8m0_from_f32_ceil(x), b, "ceil({x:e}) [{:#010x}]", x.to_bits());
    }
    // The defining property over a sweep: the result is >= x and half of it is < x.
    for i in 1..20_000u32 {
        let x = f32::from_bits(i.wrapping_mul(214_013).wrapping_add(2_531_011) % 0x7F00_0000);
        let b = e8m0_from_f32_ceil(x);
        let v = e8m0_to_f32(b);
        assert!(
            v >= x && (b == 0 || v / 2.0 < x),
            "ceil({x:e}) = 2^{}",
            i32::from(b) - 127
        );
    }
}

#[test]
fn e8m0_round_to_nearest_boundaries() {
    let p = |e: i32| pow2(e) as f32;
    let cases: &[(f32, u8)] = &[
        (1.0, 127),
        (1.5, 128),
        (next_down(1.5), 127),
        (3.0, 129),
        (next_down(3.0), 128),
        (0.75, 127),
        (next_down(0.75), 126),
        (p(-127), 0),
        (next_up(p(-127)), 1),
        (1.5 * p(-127), 1),
        (f32::from_bits(1), 0),
        (p(-126), 1),
        (1.5 * p(-126), 2),
        (p(127), 254),
        (1.5 * p(127), 255),
        (next_down(1.5 * p(127)), 254),
        (f32::MAX, 255),
        (f32::INFINITY, 255),
        (f32::NEG_INFINITY, 255),
        (0.0, 255),
        (-0.0, 255),
        (-1.0, 255),
        (-f32::from_bits(1), 255),
        (f32::NAN, 255),
    ];
    for &(x, b) in cases {
        assert_eq!(f32_to_e8m0(x), b, "f32_to_e8m0({x:e}) [{:#010x}]", x.to_bits());
    }
}

#[test]
fn e8m0_matches_ml_dtypes() {
    for c in &cases() {
        assert_eq!(f32_to_e8m0(c.x), c.e8m0, "{:e} [{:#010x}]", c.x, c.x.to_bits());
    }
}

#[test]
fn mx_shared_exponent_follows_ocp_mx() {
    // floor(log2(amax)) - emax_elem.
    assert_eq!(mx_scale_exponent(6.0, EMAX_E2M1), Some(0));
    assert_eq!(mx_scale_exponent(-6.0, EMAX_E2M1), Some(0));
    assert_eq!(mx_scale_exponent(7.99, EMAX_E2M1), Some(0)); // 7.99 / 1 > 6: the element clamps
    assert_eq!(mx_scale_exponent(8.0, EMAX_E2M1), Some(1));
    assert_eq!(mx_scale_exponent(448.0, EMAX_E4M3), Some(0));
    assert_eq!(mx_scale_exponent(1.0, EMAX_E4M3), Some(-8));
    assert_eq!(mx_scale_exponent(57344.0, EMAX_E5M2), Some(0));
    assert_eq!(mx_scale_exponent(1.0, EMAX_INT8), Some(0));
    assert_eq!(mx_scale_exponent(3.0, EMAX_E3M2), Some(-3));
    assert_eq!(mx_scale_exponent(3.0, EMAX_E2M3), Some(-1));
    // Zero block, clamping below, NaN above.
    assert_eq!(mx_scale_exponent(0.0, EMAX_E4M3), Some(-127));
    assert_eq!(mx_scale_exponent(1e-40, EMAX_E4M3), Some(-127));
    assert_eq!(mx_scale_exponent(f32::MAX, 0), Some(127));
    assert_eq!(mx_scale_exponent(f32::MAX, -1), None);
    assert_eq!(mx_scale_exponent(f32::INFINITY, EMAX_E4M3), None);
    assert_eq!(mx_scale_exponent(f32::NAN, EMAX_E4M3), None);
    assert_eq!(mx_scale_exponent(1.0, i32::MIN), None);
    assert_eq!(mx_scale_exponent(1.0, i32::MAX), Some(-127));
    assert_eq!(mx_scale_e8m0(6.0, EMAX_E2M1), 127);
    assert_eq!(mx_scale_e8m0(f32::NAN, EMAX_E2M1), E8M0_NAN);
    assert_eq!(mx_scale_e8m0(0.0, EMAX_E2M1), 0);
    // floor_log2 on subnormals and between powers of two.
    assert_eq!(floor_log2(f32::from_bits(1)), Some(-149));
    assert_eq!(floor_log2(f32::from_bits(0x007F_FFFF)), Some(-127));
    assert_eq!(floor_log2(next_down(4.0)), Some(1));
    assert_eq!(floor_log2(-3.0), Some(1));
    assert_eq!(floor_log2(0.0), None);
    assert_eq!(floor_log2(f32::NAN), None);
    // An MXFP4 block end to end: amax 20 -> 2^(4 - 2) = 4; 20 / 4 = 5 ties to 4 (0x6).
    let scale = e8m0_to_f32(mx_scale_e8m0(20.0, EMAX_E2M1));
    assert_eq!(scale, 4.0);
    assert_eq!(quantize_fp4_packed(&[20.0, -2.0], scale), vec![0x96]);
}

// ---------------------------------------------------------------------------------------------
// Whole chunks of the f32 bit patterns against ml_dtypes' digests.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[test]
fn every_f32_of_the_digested_chunks_matches_ml_dtypes() {
    let n = u32_at(DIGESTS, 0) as usize;
    assert_eq!(DIGESTS.len(), 4 + n * 36);
    assert!(n >= 40, "{n} chunks");
    for rec in DIGESTS[4..].chunks_exact(36) {
        let chunk = u32_at(rec, 0);
        let want = [u64_at(rec, 4), u64_at(rec, 12), u64_at(rec, 20), u64_at(rec, 28)];
        let mut got = [0u64; 4];
        for b in (chunk << 22)..=((chunk << 22) | 0x3F_FFFF) {
            let x = f32::from_bits(b);
            let mult = u64::from(b).wrapping_mul(GOLDEN) | 1;
            let outs = [
                f32_to_e4m3(x),
                f32_to_e4m3_sat(x),
                f32_to_e2m1_ml_dtypes(x),
                f32_to_e8m0(x),
            ];
            for (g, o) in got.iter_mut().zip(outs) {
                *g = g.wrapping_add((u64::from(o) + 1).wrapping_mul(mult));
            }
        }
        let names = ["f32_to_e4m3", "f32_to_e4m3_sat", "f32_to_e2m1_ml_dtypes", "f32_to_e8m0"];
        for k in 0..4 {
            assert_eq!(got[k], want[k], "{} over patterns {:#010x}..", names[k], chunk << 22);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// INT8 / INT4

#[test]
fn int8_per_channel_rounds_half_to_even_and_clamps() {
    // Row 0: amax 127 -> scale 1, so x / scale is exact and the ties are visible.
    // Row 1: all zero -> scale 1. Row 2: non-finite entries.
    let w = [
        127.0,
        0.5,
        1.5,
        2.5,
        -0.5,
        -2.5,
        -127.0,
        3.49, //
        0.0,
        -0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0, //
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        254.0,
        -254.0,
        1.0,
        2.0,
        3.0,
    ];
    let q = quantize_int8_per_channel(&w, 3, 8).unwrap();
    assert_eq!(q.scales, vec![1.0, 1.0, 2.0]);
    assert_eq!(&q.codes[..8], &[127, 0, 2, 2, 0, -2, -127, 3]);
    assert!(q.codes[8..16].iter().all(|&c| c == 0));
    assert_eq!(&q.codes[16..], &[0, 127, -127, 127, -127, 0, 1, 2]); // 1/2 ties to 0, 3/2 to 2
    let d = q.dequantize().unwrap();
    assert_eq!(&d[..8], &[127.0, 0.0, 2.0, 2.0, 0.0, -2.0, -127.0, 3.0]);
    assert_eq!(quantize_i8(1000.0, 1.0), 127);
    assert_eq!(quantize_i8(-1000.0, 1.0), -127);
    assert_eq!(quantize_i8(1.0, 0.0), 127);
    assert_eq!(quantize_i8(f32::NAN, 1.0), 0);
    // -128 is never produced but decodes.
    assert_eq!(dequantize_int8_per_channel(&[-128], &[0.5], 1, 1).unwrap(), vec![-64.0]);

    // Error bound on a pseudo-random matrix: |w - deq| <= scale / 2.
    let (rows, cols) = (5, 33);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
        .collect();
    let q = quantize_int8_per_channel(&w, rows, cols).unwrap();
    let d = q.dequantize().unwrap();
    for (i, (a, b)) in w.iter().zip(&d).enumerate() {
        assert!((a - b).abs() <= q.scales[i / cols] * 0.5 + 1e-6, "{a} vs {b}");
    }
    assert!(q.codes.iter().all(|&c| c >= -127));

    assert_eq!(
        quantize_int8_per_channel(&w, rows, cols + 1),
        Err(CodecError::Length {
            what: "w",
            expected: 170,
            got: 165
        })
    );
    assert!(quantize_int8_per_channel(&[], usize::MAX, 2).is_err());
    assert!(dequantize_int8_per_channel(&q.codes, &q.scales[..2], rows, cols).is_err());
    let empty = quantize_int8_per_channel(&[], 2, 0).unwrap();
    assert_eq!(empty.scales, vec![1.0, 1.0]);
    assert_eq!(empty.dequantize().unwrap(), Vec::<f32>::new());
}

#[test]
fn int4_nibbles_are_twos_complement() {
    for q in -8..=7i8 {
        assert_eq!(nibble_to_i4(i4_to_nibble(q)), q);
    }
    assert_eq!(i4_to_nibble(-1), 0xF);
    assert_eq!(i4_to_nibble(-8), 0x8);
    assert_eq!(i4_to_nibble(100), 0x7);
    assert_eq!(i4_to_nibble(-100), 0x8);
    assert_eq!(nibble_to_i4(0xF9), -7); // only the low nibble is read
}

#[test]
fn int4_symmetric_groups() {
    // 2 rows x 4 cols, groups of 2: amax per group 7, 14, 0.875, 0 -> scales 1, 2, 1/8, 1.
    let w = [7.0, -2.5, 14.0, 3.0, 0.875, -0.4375, 0.0, 0.0];
    let q = quantize_int4_grouped(&w, 2, 4, 2, false).unwrap();
    assert_eq!(q.scales, vec![1.0, 2.0, 0.125, 1.0]);
    assert_eq!(q.zeros, None);
    // codes 7, -2 (tie to even), 7, 2 (1.5 ties to 2) | 7, -4 (-3.5 ties to -4), 0, 0
    let codes: Vec<i8> = unpack_nibbles(&q.packed).into_iter().map(nibble_to_i4).collect();
    assert_eq!(codes, vec![7, -2, 7, 2, 7, -4, 0, 0]);
    assert_eq!(q.packed[0], 0xE7, "first column in the low nibble");
    let d = q.dequantize().unwrap();
    assert_eq!(&d[..4], &[7.0, -2.0, 14.0, 4.0]);

    // Odd element count: the final high nibble is padding.
    let q = quantize_int4_grouped(&[1.0, -1.0, 0.5], 1, 3, 3, false).unwrap();
    assert_eq!(q.packed.len(), 2);
    assert_eq!(q.dequantize().unwrap().len(), 3);

    assert!(quantize_int4_grouped(&w, 2, 4, 3, false).is_err());
    assert!(quantize_int4_grouped(&w, 2, 4, 0, false).is_err());
    assert!(quantize_int4_grouped(&w[..7], 2, 4, 2, false).is_err());
}

#[test]
fn int4_asymmetric_groups_follow_awq() {
    // One group [-1, 0, 2, 3.5]: scale = 4.5 / 15 = 0.3, zero = rne(1 / 0.3) = 3.
    let w = [-1.0f32, 0.0, 2.0, 3.5];
    let q = quantize_int4_grouped(&w, 1, 4, 4, true).unwrap();
    let scale = 4.5f32 / 15.0;
    assert_eq!(q.scales, vec![scale]);
    assert_eq!(q.zeros, Some(vec![3]));
    let want: Vec<u8> = w
        .iter()
        .map(|&x| ((x / scale).round_ties_even() + 3.0).clamp(0.0, 15.0) as u8)
        .collect();
    assert_eq!(unpack_nibbles(&q.packed), want);
    let d = q.dequantize().unwrap();
    for (a, b) in w.iter().zip(&d) {
        assert!((a - b).abs() <= scale * 0.5 + 1e-6, "{a} vs {b}");
    }
    // All-positive group: zero clamps to 0 (AWQ does not force 0 into the range).
    let q = quantize_int4_grouped(&[1.0, 2.0, 16.0, 4.0], 1, 4, 4, true).unwrap();
    assert_eq!(q.zeros, Some(vec![0]));
    assert_eq!(q.scales, vec![1.0]);
    assert_eq!(unpack_nibbles(&q.packed), vec![1, 2, 15, 4]);
    // Constant, empty-of-finite and non-finite groups neither panic nor produce NaN scales.
    let w = [5.0, 5.0, f32::NAN, f32::NAN, f32::INFINITY, -1.0, f32::MAX, f32::MIN];
    let q = quantize_int4_grouped(&w, 1, 8, 2, true).unwrap();
    assert!(q.scales.iter().all(|s| s.is_finite() && *s > 0.0), "{:?}", q.scales);
    assert!(q.dequantize().unwrap().iter().all(|v| v.is_finite()));
    // Inconsistent fields are an error, not a panic.
    let mut bad = q.clone();
    bad.zeros = Some(vec![0]);
    assert!(bad.dequantize().is_err());
    bad.packed.pop();
    assert!(bad.dequantize().is_err());
}
