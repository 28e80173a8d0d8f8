//! The AVX-512F instantiation of the kernels: 16 f32 lanes, the helpers every template
//! calls by name, then the templates themselves (AVX-512F alone: its `vcvtph2ps` on zmm
//! covers the FP8 decode; the 4-bit kernel also takes BW and VNNI, `PACKED_FEATURES`).

use std::arch::x86_64::*;

pub const LANES: usize = 16;

#[inline]
#[target_feature(enable = "avx512f")]
fn zero() -> __m512 {
    _mm512_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 16 readable floats at `p`.
    unsafe { _mm512_loadu_ps(p) }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store(p: *mut f32, v: __m512) {
    // SAFETY: the caller guarantees 16 writable floats at `p`.
    unsafe { _mm512_storeu_ps(p, v) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
    _mm512_fmadd_ps(a, b, c)
}

/// 32 bf16 at `p` as (even elements, odd elements) in f32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_bf16_pair(p: *const u16) -> (__m512, __m512) {
    // SAFETY: the caller guarantees 32 readable bf16 at `p`.
    let v = unsafe { _mm512_loadu_si512(p as *const __m512i) };
    let even = _mm512_slli_epi32::<16>(v);
    let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
    (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn hsum(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

/// 16 E4M3 codes at `p`, decoded and times `s`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn e4m3_bits(p: *const u8, s: f32) -> __m512 {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let c = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) });
    let mag = _mm512_and_si512(c, _mm512_set1_epi32(0x7F));
    let sign = _mm512_slli_epi32::<24>(_mm512_and_si512(c, _mm512_set1_epi32(0x80)));
    let bits = _mm512_or_si512(_mm512_slli_epi32::<20>(mag), sign);
    let v = _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(f32::from_bits(0x7B80_0000))); // 2^120
    let v = _mm512_mul_ps(v, _mm512_set1_ps(s));
    let nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F));
    _mm512_mask_blend_ps(nan, v, _mm512_set1_ps(f32::NAN))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(v: f32) -> __m512 {
    _mm512_set1_ps(v)
}

/// Whether any of the `len` E4M3 codes at `p` is NaN (`0x7F` or `0xFF`), 64 at a time:
/// with the sign bits cleared, `byte + 1` reaches bit 7 only for `0x7F`, and no byte
/// carries into the next.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn has_nan_e4m3(p: *const u8, len: usize) -> bool {
    let (low7, one, top) = (
        _mm512_set1_epi8(0x7F),
        _mm512_set1_epi8(1),
        _mm512_set1_epi8(0x80u8 as i8),
    );
    let mut acc = _mm512_setzero_si512();
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: the caller guarantees `len` readable bytes at `p`.
        let v = unsafe { _mm512_loadu_si512(p.add(i) as *const __m512i) };
        let x = _mm512_and_si512(v, low7);
        acc = _mm512_or_si512(acc, _mm512_and_si512(_mm512_add_epi32(x, one), top));
        i += 64;
    }
    // SAFETY: as above, `i..len` is in range.
    _mm512_test_epi32_mask(acc, acc) != 0 || (i..len).any(|q| unsafe { *p.add(q) } & 0x7F == 0x7F)
}

/// 16 E4M3 codes at `p` as `e4m3 / 2^8` in f32 (NaN codes come out finite: the
/// kernel checks for them separately). Sign-extended to 16 bits and shifted left by
/// 7, a code's exponent and mantissa land in the f16 fields and its sign in bit 15
/// (bit 14, a copy of the sign, is cleared): exactly `e4m3 / 2^8` as an f16,
/// subnormals included; `vcvtph2ps` widens it exactly.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_e4m3(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let c = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(p as *const __m128i) });
    let h = _mm256_and_si256(_mm256_slli_epi16::<7>(c), _mm256_set1_epi16(0xBF80u16 as i16));
    _mm512_cvtph_ps(h)
}

/// Hints that the line at `p` is read soon, into L2 (a hint: never faults).
#[inline]
#[target_feature(enable = "avx512f")]
fn prefetch_l2(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
}

/// Vectors per 16 weights (an INT8 step).
pub const PER: usize = 1;

/// 64 packed bytes (128 4-bit codes, eight per 32-bit lane).
type Bits = __m512i;

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_bits(p: *const u8) -> Bits {
    // SAFETY: the caller guarantees 64 readable bytes at `p`.
    unsafe { _mm512_loadu_si512(p as *const __m512i) }
}

/// The E2M1 table of the 4-bit kernel: code `c` to `2 x E2M1(c)` (exact integers -12..=12)
/// as bytes, in every 128-bit lane (for `vpshufb`). Unused by the INT4 formats.
type WTab = __m512i;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn wtable() -> WTab {
    // SAFETY: the table holds 16 bytes.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(super::packed::E2M1_X2.as_ptr() as *const __m128i) })
}

/// The 128 codes of `v` as four vectors of 32 signed 16-bit weights: vector `t`, lane `m`
/// holds weight `4m + t` of the chunk (nibble `t` of 16-bit word `m`). INT4: the unsigned
/// nibble (a shift and a mask); `FP4`: `2 x` its E2M1 value, looked up per byte (`vpshufb`,
/// low and high nibbles; cheaper than `vpermw` on Zen 4) and sign-extended from the low and
/// high byte of each word.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn nib4<const FMT: u8>(v: Bits, tab: &WTab) -> [Bits; 4] {
    use super::packed_rows::FP4;
    if FMT == FP4 {
        let m = _mm512_set1_epi8(0x0F);
        let lo = _mm512_shuffle_epi8(*tab, _mm512_and_si512(v, m));
        let hi = _mm512_shuffle_epi8(*tab, _mm512_and_si512(_mm512_srli_epi16::<4>(v), m));
        [
            _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(lo)),
            _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(hi)),
            _mm512_srai_epi16::<8>(lo),
            _mm512_srai_epi16::<8>(hi),
        ]
    } else {
        let m = _mm512_set1_epi16(0xF);
        [
            _mm512_and_si512(v, m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
            _mm512_and_si512(_mm512_srli_epi16::<8>(v), m),
            _mm512_srli_epi16::<12>(v),
        ]
    }
}

/// `sum_t w[t] · a[t]` per 32-bit lane (pairs of 16-bit products, exact in 32 bits for
/// `|a| <= 32767`, `|w| <= 15`), `a` the chunk's four vectors of 16-bit activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot4(w: &[Bits; 4], a: *const i16) -> Bits {
    // SAFETY: the caller guarantees 128 readable values at `a`.
    let x = unsafe {
        [
            _mm512_loadu_si512(a as *const __m512i),
            _mm512_loadu_si512(a.add(32) as *const __m512i),
            _mm512_loadu_si512(a.add(64) as *const __m512i),
            _mm512_loadu_si512(a.add(96) as *const __m512i),
        ]
    };
    let s = _mm512_madd_epi16(w[0], x[0]);
    let s = _mm512_dpwssd_epi32(s, w[1], x[1]);
    let s = _mm512_dpwssd_epi32(s, w[2], x[2]);
    _mm512_dpwssd_epi32(s, w[3], x[3])
}

#[inline]
#[target_feature(enable = "avx512f")]
fn to_f32(v: Bits) -> __m512 {
    _mm512_cvtepi32_ps(v)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn mul(a: __m512, b: __m512) -> __m512 {
    _mm512_mul_ps(a, b)
}

/// Every nibble of `v` xor 8: a signed nibble `n` becomes the unsigned `n + 8`.
#[inline]
#[target_feature(enable = "avx512f")]
fn flip_signs(v: Bits) -> Bits {
    _mm512_xor_si512(v, _mm512_set1_epi32(0x8888_8888u32 as i32))
}

/// Lane `l` of the result is `p[idx[l]]`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn expand(p: *const f32, idx: Bits) -> __m512 {
    // SAFETY: the caller guarantees 16 readable floats at `p`.
    _mm512_permutexvar_ps(idx, unsafe { _mm512_loadu_ps(p) })
}

/// The scale group of each lane relative to its chunk's first, `8l / group`.
#[inline]
#[target_feature(enable = "avx512f")]
fn lane_groups(group: usize) -> Bits {
    let mut g = [0i32; 16];
    for (l, x) in g.iter_mut().enumerate() {
        *x = (8 * l / group) as i32;
    }
    // SAFETY: `g` holds 16 lanes.
    unsafe { _mm512_loadu_si512(g.as_ptr() as *const __m512i) }
}

/// `c - a * b`.
#[inline]
#[target_feature(enable = "avx512f")]
fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
    _mm512_fnmadd_ps(a, b, c)
}

/// 16 INT8 codes at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn decode8(p: *const u8) -> [__m512; 1] {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let x = unsafe { _mm_loadu_si128(p as *const __m128i) };
    [_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x))]
}

super::float::float_kernels!("avx512f");
super::float::bf16_kernel!("avx512f", micro_bf16, pair);
super::fp8::fp8_kernels!("avx512f");
super::packed::packed_kernels!("avx512f", "avx512f,avx512bw,avx512vnni");
