//! Dense `C[m, n] = A[m, k] · B[n, k]^T` on the host: `A` is f32 activations, `B` a weight
//! matrix stored row-major `[out, in]` in f32, f16 or bf16, or in a quantized format
//! ([`WeightSlice`]); accumulation is f32.
//!
//! The arithmetic runs in the `gemm` crate, which picks AVX2/FMA/AVX-512 kernels at run time
//! (this crate is built for the baseline target, where hand-written loops get only SSE2):
//! - few rows (`m <= SMALL_M`, decode): memory-bound. Weight rows go in cache-sized blocks,
//!   each read from memory once and swept by one gemv per row of `A`; a packed GEMM at this
//!   shape would pack the whole weight matrix for a handful of rows. One row against f32
//!   weights is a pure stream, served by a plain dot loop (measured as fast as the gemv and
//!   without its per-call overhead).
//! - otherwise the packed GEMM. 16-bit and quantized weights are widened (decoded) one block
//!   of rows at a time into a reused scratch buffer.
//!
//! So at most one cache-sized block of f32 weights exists per worker — never a whole expert,
//! never all experts: quantized experts are dequantized tile by tile, on the fly. Only f32
//! weights skip the widening. (The `gemm` crate allocates its own packing buffers per call.)
//!
//! `threads` is how many rayon workers this call may occupy. Callers that already run many
//! experts in parallel pass 1, so the `gemm` crate does not oversubscribe the pool; parallel
//! work (when `threads > 1`) runs on the caller's rayon pool, never on threads of its own.

use gemm::Parallelism;
use moe_core::{MoeError, Result};
use rayon::prelude::*;

use super::float_slice::FloatSlice;
use super::scratch::ScratchPool;
use super::simd_gemm::{self, SimdScratch};
use super::weight_slice::WeightSlice;

/// Largest `m` served by the few-rows path.
pub const SMALL_M: usize = 4;
/// Target size, in f32 elements, of one weight block on the few-rows path (128 KiB: it is
/// swept once per row of `A`, so it should stay in L2).
const FEW_ROWS_BLOCK_ELEMS: usize = 1 << 15;
/// Most weight rows of one block on the few-rows path (bounds a stack buffer).
const FEW_ROWS_MAX_BLOCK: usize = 256;
/// Target size, in f32 elements, of one widened weight block on the GEMM path (256 KiB, so
/// the block stays in L2 while the `gemm` crate packs it).
const BLOCK_ELEMS: usize = 1 << 16;

/// Reusable buffers of [`matmul_bt`]; keep one per concurrent caller.
#[derive(Debug, Default)]
pub struct GemmScratch {
    /// One block of widened weight rows `[rows, k]`.
    b_block: Vec<f32>,
    /// Transposed result `[n, m]` of the few-rows path.
    ct: Vec<f32>,
    /// Widened weight blocks of the few-rows path, one per concurrent worker.
    pieces: ScratchPool<Vec<f32>>,
    /// Buffers of the hand-written kernels.
    simd: SimdScratch,
}

fn check_len(what: &str, have: usize, need: Option<usize>) -> Result<usize> {
    match need {
        Some(n) if have >= n => Ok(n),
        _ => Err(MoeError::shape(
            what,
            need.map_or_else(
                || "a size that fits in memory".to_string(),
                |n| format!("at least {n} elements"),
            ),
            &[have],
        )),
    }
}

/// `c[..m * n] = a[..m * k] · b[..n * k]^T` (row-major; `c` is overwritten). A quantized `b`
/// must be exactly `[n, k]`; a float one may be longer (only its first `n * k` are read).
pub fn matmul_bt(
    a: &[f32],
    b: WeightSlice<'_>,
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    scratch: &mut GemmScratch,
) -> Result<()> {
    check_len("gemm lhs", a.len(), m.checked_mul(k))?;
    b.check_operand("gemm weights", n, k)?;
    let mn = check_len("gemm output", c.len(), m.checked_mul(n))?;
    let c = &mut c[..mn];
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.fill(0.0);
        return Ok(());
    }
    let threads = threads.max(1);
    if let Some(isa) = simd_gemm::detected() {
        return simd_gemm::matmul_bt_simd(isa, a, b, c, m, n, k, threads, &mut scratch.simd);
    }
    if m <= SMALL_M {
        return few_rows(a, b, c, m, n, k, threads, scratch);
    }
    match b {
        WeightSlice::Float(FloatSlice::F32(w)) => sgemm(a, w, c, m, n, k, n, threads),
        _ => {
            // Whole rows per block, at least a handful so each `gemm` call has some width.
            let block_rows = (BLOCK_ELEMS / k).clamp(16, n.max(16)).min(n);
            scratch.b_block.resize(block_rows * k, 0.0);
            for n0 in (0..n).step_by(block_rows) {
                let rows = block_rows.min(n - n0);
                let block = &mut scratch.b_block[..rows * k];
                widen_rows(b, n0 * k, block, k, threads)?;
                sgemm(a, block, &mut c[n0..], m, rows, k, n, threads)?;
            }
            Ok(())
        }
    }
}

/// `c[i * ldc + j] = sum_p a[i * k + p] * b[j * k + p]` for `i < m`, `j < nb`, f32, through
/// the `gemm` crate.
fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, nb: usize, k: usize, ldc: usize, threads: usize) -> Result<()> {
    // These bounds are what the unsafe call below relies on; check them for real.
    check_len("gemm lhs", a.len(), m.checked_mul(k))?;
    check_len("gemm weights", b.len(), nb.checked_mul(k))?;
    check_len(
        "gemm output",
        c.len(),
        m.checked_sub(1).and_then(|r| r.checked_mul(ldc)?.checked_add(nb)),
    )?;
    if nb > ldc {
        return Err(MoeError::shape("gemm output", format!("row stride >= {nb}"), &[ldc]));
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: `gemm::gemm` reads lhs (i, p) at a[i * k + p] (column stride 1, row stride k)
    // for i < m, p < k: in bounds by the check on `a`. It reads rhs (p, j) = B[j, p] at
    // b[j * k + p] (rhs column stride k, row stride 1) for j < nb: in bounds by the check on
    // `b`. It writes dst (i, j) at c[i * ldc + j] for j < nb <= ldc, the largest offset being
    // (m - 1) * ldc + nb - 1: in bounds by the check on `c`. `c` is a unique borrow, so the
    // destination aliases neither input. `read_dst = false` means `c` need not be initialized
    // (it is anyway) and alpha is ignored; beta = 1 scales the product.
    unsafe {
        gemm::gemm(
            m,
            nb,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// Widens `out.len() / k` weight rows starting at element `start` into `out`.
fn widen_rows(b: WeightSlice<'_>, start: usize, out: &mut [f32], k: usize, threads: usize) -> Result<()> {
    if threads > 1 {
        out.par_chunks_mut(k)
            .enumerate()
            .try_for_each(|(r, row)| b.widen_into(start + r * k, row))
    } else {
        b.widen_into(start, out)
    }
}

/// Few-rows path: weight rows are processed in cache-sized blocks (widened first unless they
/// are f32); each block is read from memory once and then swept by one `gemm`-crate gemv
/// per row of `A` (a single row against f32 weights uses a plain dot loop instead). Workers take disjoint ranges of weight rows; for `m > 1` the result is
/// built transposed (`ct`, `[n, m]`) so each worker's range is contiguous, then transposed
/// into `c`.
fn few_rows(
    a: &[f32],
    b: WeightSlice<'_>,
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    scratch: &mut GemmScratch,
) -> Result<()> {
    let GemmScratch { ct, pieces, .. } = scratch;
    let out: &mut [f32] = if m == 1 {
        // c^T and c coincide for a single row.
        &mut *c
    } else {
        ct.clear();
        ct.resize(n * m, 0.0);
        &mut ct[..]
    };
    let block = (FEW_ROWS_BLOCK_ELEMS / k).clamp(1, FEW_ROWS_MAX_BLOCK);
    let rows_per_task = n.div_ceil(threads * 4).max(block).div_ceil(block) * block;
    let pieces = &*pieces;
    let task = |(t, chunk): (usize, &mut [f32])| -> Result<()> {
        let j0 = t * rows_per_task;
        let mut widened = pieces.take();
        let mut col = [0.0f32; FEW_ROWS_MAX_BLOCK];
        for b0 in (0..chunk.len() / m).step_by(block) {
            let rows = block.min(chunk.len() / m - b0);
            let start = (j0 + b0) * k;
            if let (1, WeightSlice::Float(FloatSlice::F32(v))) = (m, b) {
                // One row against f32 weights is a pure stream over the weights; a plain dot
                // loop keeps up with memory where the crate's gemv pays per-call overhead.
                let w = v
                    .get(start..start + rows * k)
                    .ok_or_else(|| MoeError::shape("gemm weights", "in-range rows", &[v.len()]))?;
                for (dst, wr) in chunk[b0..b0 + rows].iter_mut().zip(w.chunks_exact(k)) {
                    *dst = dot(a, wr);
                }
                continue;
            }
            let w: &[f32] = match b {
                WeightSlice::Float(FloatSlice::F32(v)) => v
                    .get(start..start + rows * k)
                    .ok_or_else(|| MoeError::shape("gemm weights", "in-range rows", &[v.len()]))?,
                _ => {
                    widened.resize(rows * k, 0.0);
                    b.widen_into(start, &mut widened[..])?;
                    &widened[..]
                }
            };
            for i in 0..m {
                let row = &a[i * k..(i + 1) * k];
                if m == 1 {
                    sgemm(row, w, &mut chunk[b0..b0 + rows], 1, rows, k, rows, 1)?;
                } else {
                    sgemm(row, w, &mut col[..rows], 1, rows, k, rows, 1)?;
                    for (jj, &v) in col[..rows].iter().enumerate() {
                        chunk[(b0 + jj) * m + i] = v;
                    }
                }
            }
        }
        Ok(())
    };
    if threads > 1 {
        out.par_chunks_mut(rows_per_task * m).enumerate().try_for_each(task)?;
    } else {
        out.chunks_mut(rows_per_task * m).enumerate().try_for_each(task)?;
    }
    if m > 1 {
        for (j, col) in ct.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                c[i * n + j] = v;
            }
        }
    }
    Ok(())
}

/// f32 dot product with eight independent accumulators, so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            s[l] += x[l] * y[l];
        }
    }
    (s[0] + s[4]) + (s[1] + s[5]) + (s[2] + s[6]) + (s[3] + s[7]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[j * k + p])).sum();
            }
        }
        c
    }

    fn check(m: usize, n: usize, k: usize, threads: usize) {
        let mut seed = (m * 1000 + n * 10 + k) as u64;
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let b: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let b16: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
        let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
        let b16w: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
        let bhw: Vec<f32> = bh.iter().map(|v| v.to_f32()).collect();
        let mut scratch = GemmScratch::default();
        for (w, widened) in [
            (FloatSlice::F32(&b), &b),
            (FloatSlice::BF16(&b16), &b16w),
            (FloatSlice::F16(&bh), &bhw),
        ] {
            let want = naive(&a, widened, m, n, k);
            let mut c = vec![f32::NAN; m * n];
            matmul_bt(&a, w.into(), &mut c, m, n, k, threads, &mut scratch).unwrap();
            for (got, want) in c.iter().zip(&want) {
                assert!(
                    (f64::from(*got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{m}x{n}x{k} {:?}: {got} vs {want}",
                    w.dtype()
                );
            }
        }
    }

    #[test]
    fn matches_naive_on_both_paths() {
        // Includes k large enough that a few-rows block holds a single weight row.
        for &(m, n, k) in &[
            (1, 7, 5),
            (3, 33, 300),
            (4, 5, 1),
            (2, 3, 40000),
            (5, 17, 9),
            (37, 70, 129),
            (64, 300, 260),
        ] {
            check(m, n, k, 1);
            check(m, n, k, 3);
        }
    }

    #[test]
    fn degenerate_sizes() {
        let mut s = GemmScratch::default();
        let mut c = vec![1.0; 6];
        matmul_bt(&[], FloatSlice::F32(&[]).into(), &mut c, 2, 3, 0, 1, &mut s).unwrap();
        assert_eq!(c, vec![0.0; 6]);
        matmul_bt(&[], FloatSlice::F32(&[0.0; 12]).into(), &mut c, 0, 3, 4, 1, &mut s).unwrap();
        let err = matmul_bt(&[1.0; 3], FloatSlice::F32(&[1.0; 4]).into(), &mut c, 1, 1, 4, 1, &mut s);
        assert!(matches!(err, Err(MoeError::ShapeMismatch { .. })));
    }

    #[test]
    fn quantized_weights_match_their_decoded_values_on_both_paths() {
        use crate::cpu::weight_slice::{QuantMatrix, QuantSlice};
        // INT8 per channel and NVFP4, decoded once with `at` as the reference operand; the GEMM
        // must decode block by block (and row by row on the few-rows path) to the same values.
        let (n, k) = (70, 64);
        let mut seed = 9u64;
        let codes: Vec<u8> = (0..n * k).map(|_| (lcg(&mut seed) * 250.0) as i8 as u8).collect();
        let scales: Vec<f32> = (0..n).map(|r| 0.01 + r as f32 * 1e-3).collect();
        let packed: Vec<u8> = (0..n * k / 2).map(|i| (i * 37 % 256) as u8).collect();
        let sf: Vec<u8> = (0..n * k / 16).map(|i| 0x30 + (i % 9) as u8).collect();
        let mats = [
            QuantMatrix::Int8Channel {
                codes: &codes,
                scales: &scales,
            },
            QuantMatrix::Nvfp4 {
                packed: &packed,
                block_scales: &sf,
                global: 0.125,
            },
        ];
        for matrix in mats {
            let q = QuantSlice::new("w", n, k, matrix).unwrap();
            let decoded: Vec<f32> = (0..n * k).map(|i| q.at(i)).collect();
            for (m, threads) in [(1, 1), (3, 2), (37, 1), (37, 3)] {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                let want = naive(&a, &decoded, m, n, k);
                let mut c = vec![f32::NAN; m * n];
                matmul_bt(&a, q.into(), &mut c, m, n, k, threads, &mut GemmScratch::default()).unwrap();
                for (got, want) in c.iter().zip(&want) {
                    assert!(
                        (f64::from(*got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "m={m}: {got} vs {want}"
                    );
                }
            }
            // A quantized operand must have exactly the GEMM's shape.
            let mut c = vec![0.0; 2 * n];
            let err = matmul_bt(
                &[0.0; 2 * 32],
                q.into(),
                &mut c,
                2,
                n,
                32,
                1,
                &mut GemmScratch::default(),
            );
            assert!(matches!(err, Err(MoeError::ShapeMismatch { .. })), "{err:?}");
        }
    }
}
