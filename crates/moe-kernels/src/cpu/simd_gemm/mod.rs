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
//!   scan of each row (which also pulls it into cache) keeps NaN weights giving NaN. For
//!   more rows they are decoded one `NR x kc` tile at a time into L1 by a bit trick (`e4m3`
//!   bits moved into the f32 fields, then `x 2^120`, then the block scale: the same two exact
//!   steps and one rounding as the lookup-table decode, so bit-identical), amortized over the
//!   rows. FP8 per tensor is the same thing with one block covering the matrix.
//! - INT4 (signed or with zero points), NVFP4, MXFP4 and INT8, for a few rows of `A`, are
//!   decoded in registers too (`packed.rs`: the 4-bit codes as 16-bit integers multiplied
//!   by the activations quantized to 16 bits per chunk, `vpmaddwd` / `vpdpwssd`; INT8 as
//!   f32; scales applied once per group to the partial sums; `packed_rows.rs` says when that
//!   keeps the reference's NaN and infinity semantics). For more rows, non-finite
//!   activations (4-bit), and shapes those kernels don't take, they go the next way.
//! - every other format (f16, and the packed ones above past a few rows) is decoded whole
//!   rows at a time by [`WeightSlice::widen_into`] into a small tile, then read as f32.
//!
//! Files: `x86.rs` (feature detection, dispatch to the monomorphized kernels; `portable.rs`
//! stands in off x86-64), `float.rs`, `fp8.rs` and `packed.rs` (the kernel templates),
//! `avx512.rs` and `avx2.rs` (their instantiations with each ISA's helpers), `packed_rows.rs`
//! (the packed formats' layout and scales), `tests.rs` and `packed_tests.rs`.
//!
//! The micro-kernel is the dot-product form: an `MR x NR` tile of `C` (up to 4 x 4) keeps
//! one vector accumulator per output, walks `k` with vectors of `A` rows and `B` rows, and
//! reduces each accumulator horizontally at the end of the `k` block. AVX2 bf16 uses a
//! 3 x 3 tile and widens the even then the odd half of each chunk (`micro_bf16_halves`), so
//! tile and operands fit its 16 registers. Loop nest: `k` blocks
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
use packed_rows::{Packed, QuantActs, quantize_acts};

// The kernels are x86-64 only; elsewhere `portable` stands in with the same names (and no
// `Isa` is ever detected, so it is never reached).
#[cfg(not(target_arch = "x86_64"))]
use portable as arch;
#[cfg(target_arch = "x86_64")]
use x86 as arch;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod float;
#[cfg(target_arch = "x86_64")]
mod fp8;
#[cfg(target_arch = "x86_64")]
mod packed;
mod packed_rows;
#[cfg(test)]
mod packed_tests;
#[cfg(not(target_arch = "x86_64"))]
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Rows of `A` per micro-tile.
const MR: usize = 4;
/// Rows of `B` per micro-tile.
const NR: usize = 4;
/// `MR x NR` of the AVX2 kernels (`micro_bf16_halves`, `micro_f32`): 9 accumulators, 3
/// weight vectors and one of `A` fit 16 registers (with room for the bf16 mask constant).
/// 4 x 3, 3 x 4, 4 x 2 and 2 x 4 were slower for bf16 here
/// (docs/bench-data/cpu-2026-12-06-avx2-bf16).
const AVX2_TILE: (usize, usize) = (3, 3);
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
        let best = arch::best_isa();
        match forced.as_deref() {
            Some("portable") => None,
            Some("avx2") => best.map(|_| Isa::Avx2),
            _ => best,
        }
    })
}

/// Reusable buffers of [`matmul_bt_simd`].
#[derive(Debug, Default)]
pub struct SimdScratch {
    /// `A` in the even/odd order of the bf16 kernel.
    a_perm: Vec<f32>,
    /// `A` as 16-bit integers for the 4-bit kernel, their scales per chunk and (INT4) lane
    /// sums (see `packed_rows::quantize_acts`).
    a_q: Vec<i16>,
    a_scale: Vec<f32>,
    a_sums: Vec<f32>,
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
    /// INT4, NVFP4, MXFP4 or INT8 decoded in registers (few rows of `A` only), and the same
    /// matrix for the row groups whose scales the kernel can't apply (see `packed_rows`).
    Packed(Packed<'a>, WeightSlice<'a>),
    /// Whole rows through `widen_into`.
    Rows(WeightSlice<'a>),
}

impl Source<'_> {
    /// Whether a tile may cover part of `k` (otherwise `kc = k`).
    fn splits_k(&self) -> bool {
        match self {
            Source::F32(_) | Source::Bf16(_) => true,
            Source::Fp8Block { block, .. } => KC.is_multiple_of(block[1]),
            Source::Packed(..) | Source::Rows(_) => false,
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
    let per_tensor_scale: f32;
    let src = match b {
        WeightSlice::Float(FloatSlice::F32(v)) => Source::F32(v),
        WeightSlice::Float(FloatSlice::BF16(v)) => Source::Bf16(v),
        WeightSlice::Quant(q) => match q.matrix {
            QuantMatrix::Fp8Block { codes, scales, block } => Source::Fp8Block { codes, scales, block },
            // One block covering the whole matrix (its height a multiple of NR, as the fused
            // kernel wants), so per-tensor FP8 takes the FP8 kernels too.
            QuantMatrix::Fp8PerTensor { codes, scale } => {
                per_tensor_scale = scale;
                Source::Fp8Block {
                    codes,
                    scales: std::slice::from_ref(&per_tensor_scale),
                    block: [n.next_multiple_of(NR), k],
                }
            }
            matrix => match Packed::from_matrix(matrix, k, 8 * lanes(arch::packed_isa(isa))) {
                Some(p) if m <= FUSED_FP8_MAX_M && (!p.four_bit() || all_finite(&a[..m * k])) => Source::Packed(p, b),
                _ => Source::Rows(b),
            },
        },
        WeightSlice::Float(FloatSlice::F16(_)) => Source::Rows(b),
    };
    let SimdScratch {
        a_perm,
        a_q,
        a_scale,
        a_sums,
        tiles,
    } = scratch;
    let tiles = &*tiles;
    let a_nat = &a[..m * k];
    let a: &[f32] = match src {
        Source::Bf16(_) => {
            a_perm.resize(m * k, 0.0);
            let chunk = 2 * lanes(isa);
            for (src_row, dst_row) in a[..m * k].chunks_exact(k).zip(a_perm.chunks_exact_mut(k)) {
                permute_even_odd(src_row, dst_row, chunk);
            }
            a_perm
        }
        // The 4-bit kernel multiplies 16-bit integers: `A` quantized once per call.
        Source::Packed(p, _) if p.four_bit() => {
            let chunk = 8 * lanes(arch::packed_isa(isa));
            quantize_acts(&a[..m * k], k, chunk, p.sums_activations(), a_q, a_scale, a_sums);
            &a[..m * k]
        }
        _ => &a[..m * k],
    };
    let acts = QuantActs {
        q: a_q,
        scale: a_scale,
        sums: a_sums,
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
        unsafe { run_range(isa, a, a_nat, acts, src, out, m, n, k, kc, lo, hi, &mut tile) }
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

/// Whether every element is finite (no early exit, so it vectorizes).
fn all_finite(v: &[f32]) -> bool {
    v.iter().fold(true, |ok, x| ok & x.is_finite())
}

/// The `MR x NR` tile `run_range` walks. AVX2 takes [`AVX2_TILE`] for every source: the
/// 4 x 4 tile's 16 accumulators fill all 16 ymm registers, so the weights and `A` spilled to
/// the stack on every step (bf16: a third of the 3 x 3 tile's rate; f32 rows, which also
/// carry the decoded FP8 and packed tiles of prefill, the same 21 live vectors).
fn tile_shape(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx2 => AVX2_TILE,
        Isa::Avx512 => (MR, NR),
    }
}

/// Columns `lo..hi` of `C`, every row, every `k` block.
///
/// # Safety
/// `isa` was detected on this CPU; `a` (in the order `src` wants) and `a_nat` (as given)
/// hold `m * k` elements, `out` points to `m * n` writable elements that nothing else
/// accesses in columns `lo..hi` during the call, `src` covers `[n, k]`, `lo <= hi <= n`.
unsafe fn run_range(
    isa: Isa,
    a: &[f32],
    a_nat: &[f32],
    acts: QuantActs<'_>,
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
                        arch::micro_fp8(
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
    if let Source::Packed(pk, rows) = src {
        // SAFETY: the caller's contract.
        return unsafe { run_packed(isa, a_nat, acts, pk, rows, out, m, n, k, lo, hi, tile) };
    }
    let (tile_m, tile_n) = tile_shape(isa);
    for k0 in (0..k).step_by(kc) {
        let kb = kc.min(k - k0);
        let accumulate = k0 > 0;
        for n0 in (lo..hi).step_by(tile_n) {
            let nr = tile_n.min(hi - n0);
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
                Source::Packed(..) => unreachable!("packed sources return above"),
                Source::Rows(w) => {
                    tile.resize(nr * k, 0.0);
                    w.widen_into(n0 * k, &mut tile[..nr * k])?;
                    (tile.as_ptr() as *const u8, k, false)
                }
            };
            // Few rows (decode) stream each weight row once: prefetch the next group of this
            // worker's rows (contiguous when `kc == k`) while this one computes.
            let next: &[u8] = match src {
                Source::Bf16(v) if m <= FUSED_FP8_MAX_M && kb == k && n0 + tile_n < hi => {
                    let rows = &v[(n0 + tile_n) * k..(n0 + tile_n + tile_n.min(hi - n0 - tile_n)) * k];
                    // SAFETY: viewing initialized bf16 elements as their bytes.
                    unsafe { std::slice::from_raw_parts(rows.as_ptr() as *const u8, rows.len() * 2) }
                }
                _ => &[],
            };
            let mut i0 = 0;
            while i0 < m {
                let mr = tile_m.min(m - i0);
                let ap = a.as_ptr().wrapping_add(i0 * k + k0);
                let cp = out.0.wrapping_add(i0 * n + n0);
                // SAFETY: rows i0..i0+mr of `A` and of `C` exist; `bptr` points at `nr` rows of
                // `kb` weights with stride `ldb` (stored rows or the decoded tile); columns
                // n0..n0+nr of `C` lie in this worker's range.
                unsafe { arch::micro(isa, bf16_rows, mr, nr, ap, k, bptr, ldb, kb, cp, n, accumulate, next) };
                i0 += mr;
            }
        }
    }
    Ok(())
}

/// Columns `lo..hi` of `C` from packed rows decoded in registers, `NR` rows at a time: the
/// group's scales are gathered (and checked, see `packed_rows`) first; a group whose scales
/// fail the check is widened by `widen_into` and read by the f32 kernel instead.
///
/// # Safety
/// As [`run_range`]; `m <= FUSED_FP8_MAX_M`; for the 4-bit formats `acts` is `a_nat`
/// quantized by `quantize_acts` for the chunk of `packed_isa(isa)`; `pk` and `rows` are the
/// same validated `[n, k]` matrix, which `from_matrix` accepted for that chunk.
unsafe fn run_packed(
    isa: Isa,
    a_nat: &[f32],
    acts: QuantActs<'_>,
    pk: Packed<'_>,
    rows: WeightSlice<'_>,
    out: OutPtr,
    m: usize,
    n: usize,
    k: usize,
    lo: usize,
    hi: usize,
    tile: &mut Vec<f32>,
) -> Result<()> {
    let (codes, ldb) = pk.codes(k);
    let (fmt, period) = (pk.fmt(), pk.period(k));
    let pisa = arch::packed_isa(isa);
    let chunks = k / (8 * lanes(pisa));
    let per_row = k / period;
    for n0 in (lo..hi).step_by(NR) {
        let nr = NR.min(hi - n0);
        // Scales, then zero points, each with a vector's worth of padding (the kernel reads
        // a whole vector of them where a chunk holds fewer groups).
        let pad = NR * per_row + 16;
        tile.resize(2 * pad, 0.0);
        let (s, z) = tile.split_at_mut(pad);
        // SAFETY: the caller guarantees the ISA.
        if !unsafe { pk.gather(isa, n0, nr, k, s, z) } {
            tile.resize(nr * k, 0.0);
            rows.widen_into(n0 * k, &mut tile[..nr * k])?;
            let mut i0 = 0;
            while i0 < m {
                let mr = MR.min(m - i0);
                // SAFETY: rows i0..i0+mr of `A` (natural order) and of `C` exist; the tile
                // holds `nr` decoded rows of `k`; columns n0..n0+nr of `C` are this worker's.
                unsafe {
                    arch::micro(
                        isa,
                        false,
                        mr,
                        nr,
                        a_nat.as_ptr().wrapping_add(i0 * k),
                        k,
                        tile.as_ptr() as *const u8,
                        k,
                        k,
                        out.0.wrapping_add(i0 * n + n0),
                        n,
                        false,
                        &[],
                    )
                };
                i0 += mr;
            }
            continue;
        }
        let next = if n0 + NR < hi {
            &codes[(n0 + NR) * ldb..(n0 + NR + NR.min(hi - n0 - NR)) * ldb]
        } else {
            &[][..]
        };
        let mut i0 = 0;
        while i0 < m {
            let mr = FUSED_MR.min(m - i0);
            // The rows' quantized activations, scales and lane sums (unread by INT8).
            let qa = (
                acts.q.as_ptr().wrapping_add(i0 * k),
                acts.scale.as_ptr().wrapping_add(i0 * chunks),
                acts.sums.as_ptr().wrapping_add(i0 * (k / 8)),
            );
            // SAFETY: rows i0..i0+mr of `A` (k each, and of `acts` for a 4-bit format) and of
            // `C` exist; `codes` holds rows n0..n0+nr of `ldb` bytes; `s` and `z` their
            // `nr x per_row` scales and zero points from `gather`; columns n0..n0+nr of `C`
            // are this worker's; `pisa` is `packed_isa` of the caller's detected ISA.
            unsafe {
                arch::micro_packed(
                    pisa,
                    fmt,
                    mr,
                    nr,
                    a_nat.as_ptr().wrapping_add(i0 * k),
                    qa,
                    codes.as_ptr().wrapping_add(n0 * ldb),
                    ldb,
                    k,
                    period,
                    s.as_ptr(),
                    z.as_ptr(),
                    out.0.wrapping_add(i0 * n + n0),
                    n,
                    next,
                )
            };
            i0 += mr;
        }
    }
    Ok(())
}

/// Decodes `dst.len()` FP8-block weights of row `row` starting at column `k0` (of `k`).
///
/// # Safety
/// `isa` was detected on this CPU; `codes` holds `[n, k]` with `row < n`, `scales` its block
/// scales, `k0 + dst.len() <= k`.
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
        // SAFETY: the caller guarantees the ISA; `q` and `d` have the same length.
        let done = unsafe { arch::decode_e4m3(isa, q, s, d) };
        for (o, &code) in d[done..].iter_mut().zip(&q[done..]) {
            *o = E4M3_TO_F32[code as usize] * s;
        }
        c = end;
    }
}
