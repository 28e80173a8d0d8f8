//! Hand-written x86-64 kernels of [`super::gemm::matmul_bt`] (`C = A · B^T`, f32 `A`, weights
//! `B` row-major `[n, k]`), selected at run time: AVX-512F, else AVX2+FMA+F16C, else none (the
//! caller then takes the portable `gemm`-crate path).
//!
//! Why not the `gemm` crate here: its kernels want an f32 `B`, so 16-bit and quantized
//! weights had to be widened into a scratch block first and then packed again by the crate,
//! two extra passes over every weight element per row block; and on the few-rows (decode)
//! shape it pays per-call overheads on a purely memory-bound stream. These kernels read the
//! weights as stored:
//! - bf16 is widened in registers. A 64-byte load holds 32 bf16 as 16 u32 lanes; a shift
//!   by 16 gives the even elements as f32 and a mask the odd ones, two cheap ALU ops per
//!   32 weights and no shuffle. `A` is permuted once per call to the same even/odd order
//!   (per `2 x LANES` chunk of `k`), so the dot products pair the right elements.
//! - f32 is read directly.
//! - FP8 128-block weights, for a few rows of `A` (decode), are decoded in registers:
//!   sign-extended bytes shifted into f16 fields are exactly `e4m3 / 2^8` (subnormals
//!   included), one `vcvtph2ps` widens them, and each 128-column block's partial dot
//!   products are scaled once by `scale * 2^8` instead of every weight; a streaming NaN
//!   scan of each row (which also pulls it into cache) keeps NaN weights giving NaN. For more rows they are decoded one
//!   `NR x kc` tile at a time into L1 by a bit trick (`e4m3` bits moved into the f32
//!   fields, then `x 2^120`, then the block scale: the same two exact steps and one rounding
//!   as the lookup-table decode, so bit-identical), amortized over the rows.
//! - every other format (f16, NVFP4, MXFP4, INT4, INT8, FP8 per tensor) is decoded whole
//!   rows at a time by [`WeightSlice::widen_into`] into a small tile, then read as f32.
//!
//! The micro-kernel is the dot-product form: an `MR x NR` tile of `C` (up to 4 x 4) keeps
//! one vector accumulator per output, walks `k` with vectors of `A` rows and `B` rows, and
//! reduces each accumulator horizontally at the end of the `k` block. Loop nest: `k` blocks
//! of `kc` (so an `m x kc` block of `A` stays in L2 when `m` is large), then groups of `NR`
//! weight rows (each read from memory once per `k` block), then groups of `MR` rows of `A`.
//! With `threads > 1` the weight rows are split into contiguous ranges, one per worker.

use std::sync::OnceLock;

use half::bf16;
use moe_core::{MoeError, Result};
use rayon::prelude::*;

use super::float_slice::FloatSlice;
use super::scratch::ScratchPool;
use super::weight_slice::{QuantMatrix, WeightSlice};
use crate::codec::fp8::E4M3_TO_F32;

/// Rows of `A` per micro-tile.
const MR: usize = 4;
/// Rows of `B` per micro-tile.
const NR: usize = 4;
/// `k` block when the whole `m x k` block of `A` would not stay in L2 (multiple of 128 so
/// FP8 scale blocks never straddle two `k` blocks, and of every `2 x LANES`).
const KC: usize = 1024;
/// Largest `A` block, in bytes, walked whole along `k` (half of a 1 MiB L2).
const A_BLOCK_BYTES: usize = 512 << 10;
/// Largest `m` served by the fused FP8 kernel (decode: a few rows per expert; above it the
/// tile decode is amortized over enough rows to be cheaper), and below which the bf16 kernel
/// prefetches the next row group.
const FUSED_FP8_MAX_M: usize = 4;
/// Rows of `A` per fused FP8 micro-tile (each needs `NR` running and `NR` block sums).
const FUSED_MR: usize = 2;

/// The instruction set the kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

/// The best available kernel set, detected once. `MOE_CPU_ISA=avx2` forces the AVX2 kernels
/// and `MOE_CPU_ISA=portable` none (for tests and comparisons).
pub fn detected() -> Option<Isa> {
    static ISA: OnceLock<Option<Isa>> = OnceLock::new();
    *ISA.get_or_init(|| {
        let forced = std::env::var("MOE_CPU_ISA").ok();
        let best = best_isa();
        match forced.as_deref() {
            Some("portable") => None,
            Some("avx2") => best.map(|_| Isa::Avx2),
            _ => best,
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn best_isa() -> Option<Isa> {
    if std::arch::is_x86_feature_detected!("avx512f") {
        Some(Isa::Avx512)
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        Some(Isa::Avx2)
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn best_isa() -> Option<Isa> {
    None
}

/// Reusable buffers of [`matmul_bt_simd`].
#[derive(Debug, Default)]
pub struct SimdScratch {
    /// `A` in the even/odd order of the bf16 kernel.
    a_perm: Vec<f32>,
    /// Decoded weight tiles, one per concurrent worker.
    tiles: ScratchPool<Vec<f32>>,
}

/// How the kernels read `B`.
#[derive(Clone, Copy)]
enum Source<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    /// E4M3 codes and block scales (`[ceil(n / b0), ceil(k / b1)]`).
    Fp8Block {
        codes: &'a [u8],
        scales: &'a [f32],
        block: [usize; 2],
    },
    /// Whole rows through `widen_into`.
    Rows(WeightSlice<'a>),
}

impl Source<'_> {
    /// Whether a tile may cover part of `k` (otherwise `kc = k`).
    fn splits_k(&self) -> bool {
        match self {
            Source::F32(_) | Source::Bf16(_) => true,
            Source::Fp8Block { block, .. } => KC.is_multiple_of(block[1]),
            Source::Rows(_) => false,
        }
    }
}

/// A raw output pointer shared by workers that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the workers of one call write disjoint column ranges of `C` (see `matmul_bt_simd`)
// and the call returns only after all of them finished, so no element is accessed twice.
unsafe impl Send for OutPtr {}
// SAFETY: as above: shared references to the pointer are only used for disjoint writes.
unsafe impl Sync for OutPtr {}

/// `c[..m * n] = a[..m * k] · b^T` with the kernels of `isa`. The caller checked every length
/// (`a` has `m * k`, `b` covers `[n, k]`, `c` has `m * n`) and that `m, n, k > 0`.
pub(crate) fn matmul_bt_simd(
    isa: Isa,
    a: &[f32],
    b: WeightSlice<'_>,
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    scratch: &mut SimdScratch,
) -> Result<()> {
    if a.len() < m * k || c.len() < m * n || b.len() < n * k {
        return Err(MoeError::shape(
            "simd gemm operands",
            format!("m={m} n={n} k={k}"),
            &[a.len(), b.len(), c.len()],
        ));
    }
    let src = match b {
        WeightSlice::Float(FloatSlice::F32(v)) => Source::F32(v),
        WeightSlice::Float(FloatSlice::BF16(v)) => Source::Bf16(v),
        WeightSlice::Quant(q) => match q.matrix {
            QuantMatrix::Fp8Block { codes, scales, block } => Source::Fp8Block { codes, scales, block },
            _ => Source::Rows(b),
        },
        WeightSlice::Float(FloatSlice::F16(_)) => Source::Rows(b),
    };
    let SimdScratch { a_perm, tiles } = scratch;
    let tiles = &*tiles;
    let a: &[f32] = match src {
        Source::Bf16(_) => {
            a_perm.resize(m * k, 0.0);
            let chunk = 2 * lanes(isa);
            for (src_row, dst_row) in a[..m * k].chunks_exact(k).zip(a_perm.chunks_exact_mut(k)) {
                permute_even_odd(src_row, dst_row, chunk);
            }
            a_perm
        }
        _ => &a[..m * k],
    };
    let kc = if !src.splits_k() || m * k * 4 <= A_BLOCK_BYTES {
        k
    } else {
        KC
    };
    let out = OutPtr(c.as_mut_ptr());
    let run = |lo: usize, hi: usize| -> Result<()> {
        let mut tile = tiles.take();
        // SAFETY: `a` holds `m * k`, `c` holds `m * n` (checked above, `c` borrowed mutably for
        // the whole call), `src` covers `[n, k]`; this worker writes only columns `lo..hi`.
        unsafe { run_range(isa, a, src, out, m, n, k, kc, lo, hi, &mut tile) }
    };
    let parts = if threads > 1 { threads.min(n.div_ceil(NR)) } else { 1 };
    if parts <= 1 {
        return run(0, n);
    }
    // Contiguous ranges of whole NR groups, as equal as possible.
    let groups = n.div_ceil(NR);
    (0..parts).into_par_iter().try_for_each(|p| {
        let (g0, g1) = (groups * p / parts, groups * (p + 1) / parts);
        run(g0 * NR, (g1 * NR).min(n))
    })
}

fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
    }
}

/// Rewrites each full `chunk` of `src` as its even elements then its odd ones (the order the
/// bf16 kernels load weights in); a partial last chunk is copied as is.
fn permute_even_odd(src: &[f32], dst: &mut [f32], chunk: usize) {
    let half = chunk / 2;
    let full = src.len() / chunk * chunk;
    for (s, d) in src[..full].chunks_exact(chunk).zip(dst[..full].chunks_exact_mut(chunk)) {
        for j in 0..half {
            d[j] = s[2 * j];
            d[half + j] = s[2 * j + 1];
        }
    }
    dst[full..src.len()].copy_from_slice(&src[full..]);
}

/// Columns `lo..hi` of `C`, every row, every `k` block.
///
/// # Safety
/// `a` holds `m * k` elements, `out` points to `m * n` writable elements that nothing else
/// accesses in columns `lo..hi` during the call, `src` covers `[n, k]`, `lo <= hi <= n`.
unsafe fn run_range(
    isa: Isa,
    a: &[f32],
    src: Source<'_>,
    out: OutPtr,
    m: usize,
    n: usize,
    k: usize,
    kc: usize,
    lo: usize,
    hi: usize,
    tile: &mut Vec<f32>,
) -> Result<()> {
    if let Source::Fp8Block { codes, scales, block } = src {
        // Fused in-register decode: few rows, whole `k`, NR-row groups inside one scale row
        // (so one scale per column block), and scales whose `x 2^8` stays finite.
        let fused =
            m <= FUSED_FP8_MAX_M && kc == k && block[0] % NR == 0 && scales.iter().all(|s| (s * 256.0).is_finite());
        if fused {
            let nb = k.div_ceil(block[1]);
            for n0 in (lo..hi).step_by(NR) {
                let nr = NR.min(hi - n0);
                let srow = &scales[(n0 / block[0]) * nb..(n0 / block[0] + 1) * nb];
                // The next group of this worker's rows, to prefetch while this one computes.
                let next = if n0 + NR < hi {
                    &codes[(n0 + NR) * k..(n0 + NR + NR.min(hi - n0 - NR)) * k]
                } else {
                    &[][..]
                };
                let mut i0 = 0;
                while i0 < m {
                    let mr = FUSED_MR.min(m - i0);
                    let ap = a.as_ptr().wrapping_add(i0 * k);
                    let cp = out.0.wrapping_add(i0 * n + n0);
                    // SAFETY: rows i0..i0+mr of `A` (k each) and of `C` exist; `codes` holds
                    // rows n0..n0+nr of `k` codes; `srow` is their scale row (`nb` blocks);
                    // columns n0..n0+nr of `C` are this worker's.
                    unsafe {
                        micro_fp8(
                            isa,
                            mr,
                            nr,
                            ap,
                            k,
                            codes.as_ptr().wrapping_add(n0 * k),
                            k,
                            k,
                            srow,
                            block[1],
                            cp,
                            n,
                            next,
                        )
                    };
                    i0 += mr;
                }
            }
            return Ok(());
        }
    }
    for k0 in (0..k).step_by(kc) {
        let kb = kc.min(k - k0);
        let accumulate = k0 > 0;
        for n0 in (lo..hi).step_by(NR) {
            let nr = NR.min(hi - n0);
            // Where the kernel reads the tile's weights: the stored rows, or a decoded tile.
            let (bptr, ldb, bf16_rows) = match src {
                Source::F32(v) => (v.as_ptr().wrapping_add(n0 * k + k0) as *const u8, k, false),
                Source::Bf16(v) => (v.as_ptr().wrapping_add(n0 * k + k0) as *const u8, k, true),
                Source::Fp8Block { codes, scales, block } => {
                    tile.resize(nr * kb, 0.0);
                    for r in 0..nr {
                        let row = n0 + r;
                        let dst = &mut tile[r * kb..(r + 1) * kb];
                        // SAFETY: `src` covers `[n, k]` and `row < n`, `k0 + kb <= k`.
                        unsafe { decode_fp8_block(isa, codes, scales, block, k, row, k0, dst) };
                    }
                    (tile.as_ptr() as *const u8, kb, false)
                }
                Source::Rows(w) => {
                    tile.resize(nr * k, 0.0);
                    w.widen_into(n0 * k, &mut tile[..nr * k])?;
                    (tile.as_ptr() as *const u8, k, false)
                }
            };
            // Few rows (decode) stream each weight row once: prefetch the next group of this
            // worker's rows (contiguous when `kc == k`) while this one computes.
            let next: &[u8] = match src {
                Source::Bf16(v) if m <= FUSED_FP8_MAX_M && kb == k && n0 + NR < hi => {
                    let rows = &v[(n0 + NR) * k..(n0 + NR + NR.min(hi - n0 - NR)) * k];
                    // SAFETY: viewing initialized bf16 elements as their bytes.
                    unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const u8, rows.len() * 2) }
                }
                _ => &[],
            };
            let mut i0 = 0;
            while i0 < m {
                let mr = MR.min(m - i0);
                let ap = a.as_ptr().wrapping_add(i0 * k + k0);
                let cp = out.0.wrapping_add(i0 * n + n0);
                // SAFETY: rows i0..i0+mr of `A` and of `C` exist; `bptr` points at `nr` rows of
                // `kb` weights with stride `ldb` (stored rows or the decoded tile); columns
                // n0..n0+nr of `C` lie in this worker's range.
                unsafe { micro(isa, bf16_rows, mr, nr, ap, k, bptr, ldb, kb, cp, n, accumulate, next) };
                i0 += mr;
            }
        }
    }
    Ok(())
}

/// Dispatches one micro-tile to the kernel of its ISA, weight kind and shape.
///
/// # Safety
/// See [`x86::micro_f32`]: `mr <= MR`, `nr <= NR`, every pointer covers its block.
#[allow(unused_variables)]
unsafe fn micro(
    isa: Isa,
    bf16_rows: bool,
    mr: usize,
    nr: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    next: &[u8],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let (np, nl) = (next.as_ptr(), next.len());
        macro_rules! shapes {
            ($m:ident, $f:ident, $bt:ty $(, $extra:expr)*) => {
                match (mr, nr) {
                    (1, 1) => x86::$m::$f::<1, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (1, 2) => x86::$m::$f::<1, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (1, 3) => x86::$m::$f::<1, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (1, _) => x86::$m::$f::<1, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (2, 1) => x86::$m::$f::<2, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (2, 2) => x86::$m::$f::<2, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (2, 3) => x86::$m::$f::<2, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (2, _) => x86::$m::$f::<2, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (3, 1) => x86::$m::$f::<3, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (3, 2) => x86::$m::$f::<3, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (3, 3) => x86::$m::$f::<3, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (3, _) => x86::$m::$f::<3, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (_, 1) => x86::$m::$f::<4, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (_, 2) => x86::$m::$f::<4, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (_, 3) => x86::$m::$f::<4, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                    (_, _) => x86::$m::$f::<4, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                }
            };
        }
        // SAFETY: the ISA was detected at run time (`detected`), and the caller's contract is
        // the kernels' contract.
        unsafe {
            match (isa, bf16_rows) {
                (Isa::Avx512, false) => shapes!(avx512, micro_f32, f32),
                (Isa::Avx512, true) => shapes!(avx512, micro_bf16, u16, np, nl),
                (Isa::Avx2, false) => shapes!(avx2, micro_f32, f32),
                (Isa::Avx2, true) => shapes!(avx2, micro_bf16, u16, np, nl),
            }
        }
    }
}

/// Dispatches one fused FP8 micro-tile (see [`x86::avx512::micro_fp8`]).
///
/// # Safety
/// `mr <= FUSED_MR`, `nr <= NR`; `a` covers `mr` rows of `k` floats at stride `lda`, `b`
/// `nr` rows of `k` codes at stride `ldb`, `srow` their `ceil(k / b1)` block scales (each
/// finite when multiplied by 256), `c` an
/// `mr x nr` block at stride `ldc`.
#[allow(unused_variables)]
unsafe fn micro_fp8(
    isa: Isa,
    mr: usize,
    nr: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    k: usize,
    srow: &[f32],
    b1: usize,
    c: *mut f32,
    ldc: usize,
    next: &[u8],
) {
    let (np, nl) = (next.as_ptr(), next.len());
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! shapes {
            ($m:ident) => {
                match (mr, nr) {
                    (1, 1) => x86::$m::micro_fp8::<1, 1>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (1, 2) => x86::$m::micro_fp8::<1, 2>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (1, 3) => x86::$m::micro_fp8::<1, 3>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (1, _) => x86::$m::micro_fp8::<1, 4>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (_, 1) => x86::$m::micro_fp8::<2, 1>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (_, 2) => x86::$m::micro_fp8::<2, 2>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (_, 3) => x86::$m::micro_fp8::<2, 3>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                    (_, _) => x86::$m::micro_fp8::<2, 4>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                }
            };
        }
        // SAFETY: the ISA was detected at run time; the caller's contract is the kernel's.
        unsafe {
            match isa {
                Isa::Avx512 => shapes!(avx512),
                Isa::Avx2 => shapes!(avx2),
            }
        }
    }
}

/// Decodes `dst.len()` FP8-block weights of row `row` starting at column `k0` (of `k`).
///
/// # Safety
/// `codes` holds `[n, k]` with `row < n`, `scales` its block scales, `k0 + dst.len() <= k`.
#[allow(unused_variables)]
unsafe fn decode_fp8_block(
    isa: Isa,
    codes: &[u8],
    scales: &[f32],
    block: [usize; 2],
    k: usize,
    row: usize,
    k0: usize,
    dst: &mut [f32],
) {
    let [b0, b1] = block;
    let nb = k.div_ceil(b1);
    let srow = &scales[(row / b0) * nb..(row / b0 + 1) * nb];
    let codes = &codes[row * k + k0..row * k + k0 + dst.len()];
    let mut c = 0;
    while c < dst.len() {
        // One run of columns under the same scale.
        let end = ((k0 + c) / b1 + 1) * b1 - k0;
        let end = end.min(dst.len());
        let s = srow[(k0 + c) / b1];
        let (q, d) = (&codes[c..end], &mut dst[c..end]);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: the ISA was detected at run time; `q` and `d` have the same length.
            let done = unsafe {
                match isa {
                    Isa::Avx512 => x86::avx512::decode_e4m3(q, s, d),
                    Isa::Avx2 => x86::avx2::decode_e4m3(q, s, d),
                }
            };
            for (o, &code) in d[done..].iter_mut().zip(&q[done..]) {
                *o = E4M3_TO_F32[code as usize] * s;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        for (o, &code) in d.iter_mut().zip(q) {
            *o = E4M3_TO_F32[code as usize] * s;
        }
        c = end;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The kernels, once per ISA from one template (`kernels!`): the vector width and the
    //! intrinsics differ, the loop structure does not.

    /// Emits `micro_f32`, `micro_bf16` and `decode_e4m3` for one ISA, given its helpers
    /// (`zero`, `load`, `fma`, `load_bf16_pair`, `hsum`, `e4m3_bits`, `store`, `LANES`).
    macro_rules! kernels {
        ($feat:literal) => {
            /// One `MR x NR` tile of `C` from f32 weight rows: `C[i][j] (+)= A_i · B_j` over `kc`.
            ///
            /// # Safety
            /// The CPU has the ISA; `a` covers `MR` rows of `kc` floats at stride `lda`, `b`
            /// `NR` rows of `kc` floats at stride `ldb`, `c` an `MR x NR` block at stride `ldc`.
            #[target_feature(enable = $feat)]
            pub unsafe fn micro_f32<const MR: usize, const NR: usize>(
                a: *const f32,
                lda: usize,
                b: *const f32,
                ldb: usize,
                kc: usize,
                c: *mut f32,
                ldc: usize,
                accumulate: bool,
            ) {
                let mut acc = [[zero(); NR]; MR];
                let full = kc / LANES * LANES;
                let mut p = 0;
                // SAFETY: (whole body) every offset stays below `kc` within its row, as the
                // contract provides.
                unsafe {
                    while p < full {
                        let mut bv = [zero(); NR];
                        for j in 0..NR {
                            bv[j] = load(b.add(j * ldb + p));
                        }
                        for i in 0..MR {
                            let av = load(a.add(i * lda + p));
                            for j in 0..NR {
                                acc[i][j] = fma(av, bv[j], acc[i][j]);
                            }
                        }
                        p += LANES;
                    }
                    for i in 0..MR {
                        for j in 0..NR {
                            let mut s = hsum(acc[i][j]);
                            for q in full..kc {
                                s += *a.add(i * lda + q) * *b.add(j * ldb + q);
                            }
                            let dst = c.add(i * ldc + j);
                            *dst = if accumulate { *dst + s } else { s };
                        }
                    }
                }
            }

            /// [`micro_f32`] over bf16 weight rows, widened in registers: each `2 x LANES` chunk
            /// of `A` must be in even/odd order (`permute_even_odd`); a partial last chunk is in
            /// natural order. `next..next + next_len` is prefetched along the way.
            ///
            /// # Safety
            /// As [`micro_f32`], with `b` pointing to bf16 bits; `next` may be anything.
            #[target_feature(enable = $feat)]
            pub unsafe fn micro_bf16<const MR: usize, const NR: usize>(
                a: *const f32,
                lda: usize,
                b: *const u16,
                ldb: usize,
                kc: usize,
                c: *mut f32,
                ldc: usize,
                accumulate: bool,
                next: *const u8,
                next_len: usize,
            ) {
                let mut acc = [[zero(); NR]; MR];
                let mut pf = 0;
                let step = 2 * LANES;
                let full = kc / step * step;
                let mut p = 0;
                // SAFETY: (whole body) every offset stays below `kc` within its row.
                unsafe {
                    while p < full {
                        // Decode: pull the next row group toward L2 while this one streams,
                        // a line per row and step (a new group starts NR new streams the
                        // hardware prefetcher would otherwise have to discover).
                        for _ in 0..NR {
                            if pf < next_len {
                                prefetch_l2(next.wrapping_add(pf));
                                pf += 64;
                            }
                        }
                        let mut be = [zero(); NR];
                        let mut bo = [zero(); NR];
                        for j in 0..NR {
                            (be[j], bo[j]) = load_bf16_pair(b.add(j * ldb + p));
                        }
                        for i in 0..MR {
                            let ae = load(a.add(i * lda + p));
                            let ao = load(a.add(i * lda + p + LANES));
                            for j in 0..NR {
                                acc[i][j] = fma(ae, be[j], acc[i][j]);
                                acc[i][j] = fma(ao, bo[j], acc[i][j]);
                            }
                        }
                        p += step;
                    }
                    for i in 0..MR {
                        for j in 0..NR {
                            let mut s = hsum(acc[i][j]);
                            for q in full..kc {
                                let w = f32::from_bits(u32::from(*b.add(j * ldb + q)) << 16);
                                s += *a.add(i * lda + q) * w;
                            }
                            let dst = c.add(i * ldc + j);
                            *dst = if accumulate { *dst + s } else { s };
                        }
                    }
                }
            }

            /// One `MR x NR` tile of `C` over all of `k` from FP8-block weight rows decoded in
            /// registers: per column block of `b1`, block sums of `A_i · e4m3_j / 2^8`, then
            /// `acc += sum * (scale * 2^8)`; columns past the last whole vector of a block go
            /// through the lookup table. A row with a NaN code gives NaN (found by a separate
            /// streaming pass over the row, which also brings it into cache: the decode loop
            /// then reads from cache rather than waiting on memory).
            ///
            /// # Safety
            /// The CPU has the ISA; `a` covers `MR` rows of `k` floats at stride `lda`, `b`
            /// `NR` rows of `k` codes at stride `ldb`, `srow` holds `ceil(k / b1)` scales whose
            /// `x 256` is finite, `c` an `MR x NR` block at stride `ldc`. `next..next + next_len`
            /// (the next row group, only prefetched) may be anything.
            #[target_feature(enable = $feat)]
            pub unsafe fn micro_fp8<const MR: usize, const NR: usize>(
                a: *const f32,
                lda: usize,
                b: *const u8,
                ldb: usize,
                k: usize,
                srow: &[f32],
                b1: usize,
                c: *mut f32,
                ldc: usize,
                next: *const u8,
                next_len: usize,
            ) {
                let mut acc = [[zero(); NR]; MR];
                let mut pf = 0;
                let mut tail = [[0.0f32; NR]; MR];
                // SAFETY: (whole body) every offset stays below `k` within its row, as the
                // contract provides.
                unsafe {
                    // NaN codes first, in a plain streaming pass over each row (which also
                    // pulls the rows into cache for the decode loop below).
                    let mut nan = [false; NR];
                    for j in 0..NR {
                        nan[j] = has_nan_e4m3(b.add(j * ldb), k);
                    }
                    let mut p0 = 0;
                    for (cb, &s) in srow.iter().enumerate() {
                        // The last block may be partial.
                        let p1 = if cb + 1 == srow.len() { k } else { p0 + b1 };
                        let full = p0 + (p1 - p0) / LANES * LANES;
                        let mut seg = [[zero(); NR]; MR];
                        let mut p = p0;
                        while p < full {
                            let mut bw = [zero(); NR];
                            // Pull the next row group toward L2 while this one computes
                            // (this group was brought in by the NaN scan): one line per step.
                            if pf < next_len {
                                prefetch_l2(next.wrapping_add(pf));
                                pf += 64;
                            }
                            for j in 0..NR {
                                bw[j] = load_e4m3(b.add(j * ldb + p));
                            }
                            for i in 0..MR {
                                let av = load(a.add(i * lda + p));
                                for j in 0..NR {
                                    seg[i][j] = fma(av, bw[j], seg[i][j]);
                                }
                            }
                            p += LANES;
                        }
                        let f = splat(s * 256.0);
                        for i in 0..MR {
                            for j in 0..NR {
                                acc[i][j] = fma(seg[i][j], f, acc[i][j]);
                                for q in full..p1 {
                                    let w = crate::codec::fp8::E4M3_TO_F32[*b.add(j * ldb + q) as usize] * s;
                                    tail[i][j] += *a.add(i * lda + q) * w;
                                }
                            }
                        }
                        p0 = p1;
                    }
                    for i in 0..MR {
                        for j in 0..NR {
                            let v = hsum(acc[i][j]) + tail[i][j];
                            *c.add(i * ldc + j) = if nan[j] { f32::NAN } else { v };
                        }
                    }
                }
            }

            /// Decodes the longest whole-vector prefix of `q` (E4M3 codes) times `s` into `d`;
            /// returns how many it decoded. Bit-identical to `E4M3_TO_F32[q] * s`: the code's
            /// exponent and mantissa bits go to the f32 fields 3 exponent bits lower
            /// (subnormal codes become f32 subnormals), `x 2^120` rebiases exactly, then one
            /// rounding by `s`; the two NaN codes are set to NaN.
            ///
            /// # Safety
            /// The CPU has the ISA; `d.len() >= q.len()`.
            #[target_feature(enable = $feat)]
            pub unsafe fn decode_e4m3(q: &[u8], s: f32, d: &mut [f32]) -> usize {
                let full = q.len() / LANES * LANES;
                let mut i = 0;
                // SAFETY: `i + LANES <= full <= q.len() <= d.len()`.
                unsafe {
                    while i < full {
                        let v = e4m3_bits(q.as_ptr().add(i), s);
                        store(d.as_mut_ptr().add(i), v);
                        i += LANES;
                    }
                }
                full
            }
        };
    }

    pub mod avx512 {
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

        kernels!("avx512f");
    }

    pub mod avx2 {
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

        /// 16 bf16 at `p` as (even elements, odd elements) in f32.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_bf16_pair(p: *const u16) -> (__m256, __m256) {
            // SAFETY: the caller guarantees 16 readable bf16 at `p`.
            let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
            let even = _mm256_slli_epi32::<16>(v);
            let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
            (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
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

        kernels!("avx2,fma,f16c");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_odd_permutation_keeps_the_tail() {
        let src: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 37];
        permute_even_odd(&src, &mut dst, 16);
        assert_eq!(
            &dst[..16],
            &[0., 2., 4., 6., 8., 10., 12., 14., 1., 3., 5., 7., 9., 11., 13., 15.]
        );
        assert_eq!(dst[16], 16.0);
        assert_eq!(dst[24], 17.0);
        assert_eq!(&dst[32..], &[32., 33., 34., 35., 36.]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp8_decode_is_bit_identical_to_the_table() {
        let codes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let mut isas = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            isas.push(Isa::Avx2);
        }
        for isa in isas {
            for s in [1.0f32, 0.25, 3.7e-5, 1.0e30, 7.0e-39] {
                let mut d = vec![0.0f32; codes.len()];
                // SAFETY: the ISA was detected above; one scale covers the one block.
                unsafe { decode_fp8_block(isa, &codes, &[s], [1 << 20, 1 << 20], codes.len(), 0, 0, &mut d) };
                for (i, (&q, &v)) in codes.iter().zip(&d).enumerate() {
                    let want = E4M3_TO_F32[q as usize] * s;
                    assert!(
                        want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()),
                        "{isa:?} s={s} code {q:#x} at {i}: {v} vs {want}"
                    );
                }
            }
        }
    }

    /// Every ISA of this CPU against an f64 reference, for each weight source (bf16 and f32
    /// direct, FP8 block tiles, f16 and INT8 through `widen_into`), on shapes with row, column
    /// and `k` remainders, a `k` long enough to be cut into blocks, and 1 or 3 workers.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_isa_and_source_matches_a_reference() {
        use crate::cpu::weight_slice::QuantSlice;
        use half::f16;
        let mut isas = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            isas.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            isas.push(Isa::Avx2);
        }
        let mut seed = 5u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, k) in &[
            (1usize, 7usize, 5usize),
            (3, 9, 45),
            (5, 13, 256),
            (1, 4, 300),
            (70, 5, 2100),
            (70, 6, 40),
            (2, 3, 1280),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let b16: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
            let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let codes: Vec<u8> = (0..n * k).map(|i| (i * 37 % 251) as u8 & 0x7E).collect();
            let (b0, b1): (usize, usize) = (2, 128);
            let scales: Vec<f32> = (0..n.div_ceil(b0) * k.div_ceil(b1))
                .map(|i| 0.01 + i as f32 * 1e-3)
                .collect();
            let fp8 = QuantSlice::new(
                "w",
                n,
                k,
                QuantMatrix::Fp8Block {
                    codes: &codes,
                    scales: &scales,
                    block: [b0, b1],
                },
            )
            .unwrap();
            // Row blocks of 4 take the fused kernel for m <= 4; a NaN code (0x7F, 0xFF) in the
            // last row must make that row's outputs NaN.
            let mut nan_codes: Vec<u8> = (0..n * k).map(|i| (i * 53 % 253) as u8 & 0x7E).collect();
            nan_codes[n * k - 1 - (k - 1) / 2] = if k % 2 == 0 { 0x7F } else { 0xFF };
            let scales4: Vec<f32> = (0..n.div_ceil(4) * k.div_ceil(b1))
                .map(|i| 0.02 + i as f32 * 1e-3)
                .collect();
            let fp8_fused = QuantSlice::new(
                "w",
                n,
                k,
                QuantMatrix::Fp8Block {
                    codes: &nan_codes,
                    scales: &scales4,
                    block: [4, b1],
                },
            )
            .unwrap();
            let i8codes: Vec<u8> = (0..n * k).map(|i| (i * 13 % 255) as u8).collect();
            let i8scales: Vec<f32> = (0..n).map(|r| 0.01 * (r + 1) as f32).collect();
            let int8 = QuantSlice::new(
                "w",
                n,
                k,
                QuantMatrix::Int8Channel {
                    codes: &i8codes,
                    scales: &i8scales,
                },
            )
            .unwrap();
            let sources: [WeightSlice<'_>; 6] = [
                FloatSlice::F32(&b).into(),
                FloatSlice::BF16(&b16).into(),
                FloatSlice::F16(&bh).into(),
                fp8.into(),
                fp8_fused.into(),
                int8.into(),
            ];
            for w in sources {
                let dense: Vec<f64> = (0..n * k).map(|i| f64::from(w.at(i))).collect();
                for &isa in &isas {
                    for threads in [1, 3] {
                        let mut c = vec![f32::NAN; m * n];
                        matmul_bt_simd(isa, &a, w, &mut c, m, n, k, threads, &mut SimdScratch::default()).unwrap();
                        for i in 0..m {
                            for j in 0..n {
                                let want: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * dense[j * k + p]).sum();
                                let scale: f64 =
                                    (0..k).map(|p| (f64::from(a[i * k + p]) * dense[j * k + p]).abs()).sum();
                                let got = f64::from(c[i * n + j]);
                                if want.is_nan() {
                                    assert!(got.is_nan(), "{isa:?} {m}x{n}x{k} ({i},{j}): {got} for a NaN weight");
                                    continue;
                                }
                                assert!(
                                    (got - want).abs() <= 1e-5 * (1.0 + scale),
                                    "{isa:?} {m}x{n}x{k} t={threads} ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
