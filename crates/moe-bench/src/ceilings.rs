//! The two machine ceilings every bench run measures next to the layer, on the same machine
//! and in the same process:
//! - compute: f32 GEMM throughput of the `gemm` crate (runtime-dispatched AVX2/AVX-512
//!   kernels, the BLAS-class GEMM of the Rust ecosystem) on a square problem, all cores;
//! - memory: read bandwidth of a multi-threaded f32 matrix-vector product over a matrix far
//!   larger than the caches (512 MiB by default against a 32 MiB L3 here), counted as matrix
//!   bytes per second.
//!
//! Both report the best of several timed repetitions after one untimed warm-up: a ceiling is
//! what the machine can do, so a repetition slowed by a transient (another process, a page
//! fault) should not lower it, and a higher ceiling only makes the layer's ratios stricter.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use moe_core::prng::SplitMix64;

/// The measured ceilings.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ceilings {
    /// Side of the square GEMM.
    pub gemm_n: usize,
    pub gemm_gflops: f64,
    /// Bytes of the GEMV matrix.
    pub gemv_bytes: u64,
    pub read_gbps: f64,
    pub threads: usize,
}

impl Ceilings {
    /// FLOPs per weight byte at which the roofline turns from memory- to compute-bound.
    pub fn balance(&self) -> f64 {
        self.gemm_gflops / self.read_gbps
    }
}

/// Median of `v` (which is sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The shortest time.
fn best(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Seconds of each of `repeats` timed calls of `f` after one warm-up call.
fn time_repeats(repeats: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// f32 `n x n x n` GEMM throughput in GFLOP/s on all rayon workers.
pub fn gemm_gflops(n: usize, repeats: usize) -> f64 {
    let mut rng = SplitMix64::new(11);
    let a = rng.fill(n * n, 1.0);
    let b = rng.fill(n * n, 1.0);
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let times = time_repeats(repeats, || {
        // SAFETY: `a`, `b` and `c` are `n * n` row-major f32 matrices (row stride n, column
        // stride 1); the call reads and writes only (i, j) with i, j < n, inside all three.
        // `c` is a unique borrow, so the destination aliases neither input.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    });
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / best(&times) / 1e9
}

/// Read bandwidth in GB/s of `y = A x` over an f32 matrix of `bytes` bytes (8192 columns):
/// the rows are split into one contiguous range per rayon worker, and each worker streams
/// four rows at a time (four concurrent streams, as a tuned GEMV does; one stream per core
/// leaves bandwidth unused, which would make the ceiling one that the layer can exceed).
pub fn gemv_read_gbps(bytes: u64, repeats: usize) -> f64 {
    let cols = 8192usize;
    let rows = ((bytes / 4) as usize / cols).max(4) / 4 * 4;
    // Real values, written once: a zero-filled allocation could map every page to the one
    // shared zero page and measure the cache instead of memory.
    let a: Vec<f32> = (0..rows * cols)
        .into_par_iter()
        .map(|i| ((i % 251) as f32) * 1e-3)
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| 1.0 + (i % 7) as f32).collect();
    let mut y = vec![0.0f32; rows];
    let workers = rayon::current_num_threads().max(1);
    let per_worker = rows.div_ceil(workers).div_ceil(4) * 4;
    let times = time_repeats(repeats, || {
        y.par_chunks_mut(per_worker).enumerate().for_each(|(w, ys)| {
            for (q, out) in ys.chunks_mut(4).enumerate() {
                let r0 = w * per_worker + 4 * q;
                let block = &a[r0 * cols..(r0 + out.len()) * cols];
                dot_rows(block, &x, out);
            }
        });
    });
    std::hint::black_box(&y);
    (rows * cols * 4) as f64 / best(&times) / 1e9
}

/// `out[r] = rows[r] · x` for the `out.len()` rows of `rows` (each `x.len()` long).
fn dot_rows(rows: &[f32], x: &[f32], out: &mut [f32]) {
    let k = x.len();
    #[cfg(target_arch = "x86_64")]
    if out.len() == 4 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features `dot4_avx2` is compiled for were detected at run time.
        let v = unsafe { dot4_avx2(rows, x) };
        out.copy_from_slice(&v);
        return;
    }
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
        *o = dot(row, x);
    }
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
    s.iter().sum::<f32>() + tail
}

/// Four rows of `rows` (each `x.len()` long) against `x`, as four interleaved streams.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot4_avx2(rows: &[f32], x: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = x.len();
    assert!(rows.len() >= 4 * k);
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut i = 0;
    while i + 16 <= k {
        // SAFETY: i + 16 <= k, so x[i..i + 16] and each row's [i..i + 16] are in bounds
        // (`rows` holds at least 4 rows of k, asserted above).
        unsafe {
            let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let p = rows.as_ptr().add(r * k + i);
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), x1, acc[1]);
            }
        }
        i += 16;
    }
    let mut out = [0.0f32; 4];
    for (r, o) in out.iter_mut().enumerate() {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds exactly 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[r][0], acc[r][1])) };
        *o = lanes.iter().sum::<f32>()
            + rows[r * k + i..(r + 1) * k]
                .iter()
                .zip(&x[i..])
                .map(|(a, b)| a * b)
                .sum::<f32>();
    }
    out
}

/// Both ceilings: a `gemm_n`-sided GEMM and a GEMV over `gemv_bytes`.
pub fn measure(gemm_n: usize, gemv_bytes: u64) -> Ceilings {
    let gemm = gemm_gflops(gemm_n, 10);
    let read = gemv_read_gbps(gemv_bytes, 10);
    Ceilings {
        gemm_n,
        gemm_gflops: gemm,
        gemv_bytes,
        read_gbps: read,
        threads: rayon::current_num_threads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn row_dots_match_the_plain_sums() {
        let x: Vec<f32> = (0..77).map(|i| 1.0 - i as f32 * 0.01).collect();
        let rows: Vec<f32> = (0..4 * 77).map(|i| (i % 13) as f32 * 0.5).collect();
        for n in [4, 3] {
            let mut out = vec![0.0; n];
            dot_rows(&rows[..n * 77], &x, &mut out);
            for (r, o) in out.iter().enumerate() {
                let want: f32 = rows[r * 77..(r + 1) * 77].iter().zip(&x).map(|(a, b)| a * b).sum();
                assert!((o - want).abs() < 1e-3 * want.abs(), "row {r}: {o} vs {want}");
            }
        }
    }

    #[test]
    fn small_ceilings_are_positive() {
        let c = measure(64, 1 << 20);
        assert!(c.gemm_gflops > 0.0 && c.read_gbps > 0.0 && c.balance() > 0.0);
    }
}
