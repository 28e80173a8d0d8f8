//! The AVX2 + FMA + F16C instantiation of the kernels: 8 f32 lanes, the helpers every
//! template calls by name, then the templates themselves. For CPUs without AVX-512 (most
//! laptops and many servers) and for `MOE_CPU_ISA=avx2`.

use std::arch::x86_64::*;

pub const LANES: usize = 8;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn zero() -> __m256 {
    _mm256_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable floats at `p`.
    unsafe { _mm256_loadu_ps(p) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store(p: *mut f32, v: __m256) {
    // SAFETY: the caller guarantees 8 writable floats at `p`.
    unsafe { _mm256_storeu_ps(p, v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
    _mm256_fmadd_ps(a, b, c)
}

/// The even elements of the 16 bf16 at `p`, as f32 (AVX2's `micro_bf16_halves` widens one half at a time).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16_even(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bf16 at `p`.
    let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v))
}

/// The odd elements of the 16 bf16 at `p`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16_odd(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bf16 at `p`.
    let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
    _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// 8 E4M3 codes at `p`, decoded and times `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn e4m3_bits(p: *const u8, s: f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    let c = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p as *const __m128i) });
    let mag = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
    let sign = _mm256_slli_epi32::<24>(_mm256_and_si256(c, _mm256_set1_epi32(0x80)));
    let bits = _mm256_or_si256(_mm256_slli_epi32::<20>(mag), sign);
    let v = _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(f32::from_bits(0x7B80_0000))); // 2^120
    let v = _mm256_mul_ps(v, _mm256_set1_ps(s));
    let nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
    _mm256_blendv_ps(v, _mm256_set1_ps(f32::NAN), nan)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn splat(v: f32) -> __m256 {
    _mm256_set1_ps(v)
}

/// Whether any of the `len` E4M3 codes at `p` is NaN (see the AVX-512 version).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn has_nan_e4m3(p: *const u8, len: usize) -> bool {
    let (low7, one, top) = (
        _mm256_set1_epi8(0x7F),
        _mm256_set1_epi8(1),
        _mm256_set1_epi8(0x80u8 as i8),
    );
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= len {
        // SAFETY: the caller guarantees `len` readable bytes at `p`.
        let v = unsafe { _mm256_loadu_si256(p.add(i) as *const __m256i) };
        let x = _mm256_and_si256(v, low7);
        acc = _mm256_or_si256(acc, _mm256_and_si256(_mm256_add_epi32(x, one), top));
        i += 32;
    }
    // SAFETY: as above, `i..len` is in range.
    _mm256_testz_si256(acc, acc) == 0 || (i..len).any(|q| unsafe { *p.add(q) } & 0x7F == 0x7F)
}

/// 8 E4M3 codes at `p` as `e4m3 / 2^8` in f32 (see the AVX-512 version).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_e4m3(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    let c = _mm_cvtepi8_epi16(unsafe { _mm_loadl_epi64(p as *const __m128i) });
    let h = _mm_and_si128(_mm_slli_epi16::<7>(c), _mm_set1_epi16(0xBF80u16 as i16));
    _mm256_cvtph_ps(h)
}

/// Hints that the line at `p` is read soon, into L2 (a hint: never faults).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_l2(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
}

/// Vectors per 16 weights (an INT8 step).
pub const PER: usize = 2;

/// 32 packed bytes (64 4-bit codes, eight per 32-bit lane).
type Bits = __m256i;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bits(p: *const u8) -> Bits {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// The E2M1 table of the 4-bit kernel: code `c` to `2 x E2M1(c)` (exact integers -12..=12)
/// as bytes, in both 128-bit lanes (for `vpshufb`). Unused by the INT4 formats.
type WTab = __m256i;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn wtable() -> WTab {
    // SAFETY: the table holds 16 bytes.
    _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(super::packed::E2M1_X2.as_ptr() as *const __m128i) })
}

/// The 64 codes of `v` as four vectors of 16 signed 16-bit weights: vector `t`, lane `m`
/// holds weight `4m + t` of the chunk (nibble `t` of 16-bit word `m`). INT4: the unsigned
/// nibble (a shift and a mask); `FP4`: `2 x` its E2M1 value, looked up per byte (`vpshufb`,
/// low and high nibbles) and sign-extended from the low and high byte of each word.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nib4<const FMT: u8>(v: Bits, tab: &WTab) -> [Bits; 4] {
    use super::packed_rows::FP4;
    if FMT == FP4 {
        let m = _mm256_set1_epi8(0x0F);
        let lo = _mm256_shuffle_epi8(*tab, _mm256_and_si256(v, m));
        let hi = _mm256_shuffle_epi8(*tab, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m));
        [
            _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(lo)),
            _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(hi)),
            _mm256_srai_epi16::<8>(lo),
            _mm256_srai_epi16::<8>(hi),
        ]
    } else {
        let m = _mm256_set1_epi16(0xF);
        [
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
            _mm256_and_si256(_mm256_srli_epi16::<8>(v), m),
            _mm256_srli_epi16::<12>(v),
        ]
    }
}

/// `sum_t w[t] · a[t]` per 32-bit lane (pairs of 16-bit products, exact in 32 bits for
/// `|a| <= 32767`, `|w| <= 15`), `a` the chunk's four vectors of 16-bit activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4(w: &[Bits; 4], a: *const i16) -> Bits {
    // SAFETY: the caller guarantees 64 readable values at `a`.
    let x = unsafe {
        [
            _mm256_loadu_si256(a as *const __m256i),
            _mm256_loadu_si256(a.add(16) as *const __m256i),
            _mm256_loadu_si256(a.add(32) as *const __m256i),
            _mm256_loadu_si256(a.add(48) as *const __m256i),
        ]
    };
    let s01 = _mm256_add_epi32(_mm256_madd_epi16(w[0], x[0]), _mm256_madd_epi16(w[1], x[1]));
    let s23 = _mm256_add_epi32(_mm256_madd_epi16(w[2], x[2]), _mm256_madd_epi16(w[3], x[3]));
    _mm256_add_epi32(s01, s23)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn to_f32(v: Bits) -> __m256 {
    _mm256_cvtepi32_ps(v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul(a: __m256, b: __m256) -> __m256 {
    _mm256_mul_ps(a, b)
}

/// Every nibble of `v` xor 8: a signed nibble `n` becomes the unsigned `n + 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn flip_signs(v: Bits) -> Bits {
    _mm256_xor_si256(v, _mm256_set1_epi32(0x8888_8888u32 as i32))
}

/// Lane `l` of the result is `p[idx[l]]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand(p: *const f32, idx: Bits) -> __m256 {
    // SAFETY: the caller guarantees 8 readable floats at `p`.
    _mm256_permutevar8x32_ps(unsafe { _mm256_loadu_ps(p) }, idx)
}

/// The scale group of each lane relative to its chunk's first, `8l / group`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_groups(group: usize) -> Bits {
    let mut g = [0i32; 8];
    for (l, x) in g.iter_mut().enumerate() {
        *x = (8 * l / group) as i32;
    }
    // SAFETY: `g` holds 8 lanes.
    unsafe { _mm256_loadu_si256(g.as_ptr() as *const __m256i) }
}

/// `c - a * b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
    _mm256_fnmadd_ps(a, b, c)
}

/// 16 INT8 codes at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode8(p: *const u8) -> [__m256; 2] {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let x = unsafe { _mm_loadu_si128(p as *const __m128i) };
    [
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(x, x))),
    ]
}

super::float::float_kernels!("avx2,fma,f16c");
super::float::bf16_kernel!("avx2,fma,f16c", micro_bf16_halves, halves);
super::fp8::fp8_kernels!("avx2,fma,f16c");
super::packed::packed_kernels!("avx2,fma,f16c", "avx2,fma,f16c");
