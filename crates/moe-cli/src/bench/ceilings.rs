//! The two machine ceilings every bench run measures next to the layer, on the same machine
//! and in the same process:
//! - compute: f32 GEMM throughput of the `gemm` crate (runtime-dispatched AVX2/AVX-512
//!   kernels, the BLAS-class GEMM of the Rust ecosystem) on a square problem, all cores;
//! - memory: read bandwidth of a multi-threaded f32 matrix-vector product over a matrix far
//!   larger than the caches (512 MiB by default against a 32 MiB L3 here), counted as matrix
//!   bytes per second.
//!
//! Both report the median of several timed repetitions after one untimed warm-up.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::prng::SplitMix64;

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
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let mut times = time_repeats(repeats, || {
        // SAFETY: `a`, `b` and `c` are `n * n` row-major f32 matrices (row stride n, column
        // stride 1); the call reads and writes only (i, j) with i, j < n, inside all three.
        // `c` is a unique borrow, so the destination aliases neither input.
        unsafe {
            gemm::gemm(
                n, n, n, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, n as isize, b.as_ptr(), 1, n as isize, 0.0f32,
                1.0f32, false, false, false, parallelism,
            );
        }
    });
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / median(&mut times) / 1e9
}

/// Read bandwidth in GB/s of `y = A x` over an f32 matrix of `bytes` bytes (`cols` columns),
/// rows split across all rayon workers.
pub fn gemv_read_gbps(bytes: u64, repeats: usize) -> f64 {
    let cols = 8192usize;
    let rows = ((bytes / 4) as usize / cols).max(1);
    // Real values, written once: a zero-filled allocation could map every page to the one
    // shared zero page and measure the cache instead of memory.
    let a: Vec<f32> = (0..rows * cols).into_par_iter().map(|i| ((i % 251) as f32) * 1e-3).collect();
    let x: Vec<f32> = (0..cols).map(|i| 1.0 + (i % 7) as f32).collect();
    let mut y = vec![0.0f32; rows];
    let mut times = time_repeats(repeats, || {
        y.par_chunks_mut(64).enumerate().for_each(|(c, ys)| {
            for (r, out) in ys.iter_mut().enumerate() {
                let row = (c * 64 + r) * cols;
                *out = dot(&a[row..row + cols], &x);
            }
        });
    });
    std::hint::black_box(&y);
    (rows * cols * 4) as f64 / median(&mut times) / 1e9
}

/// f32 dot product; AVX2+FMA when the CPU has it (this crate is built for the baseline
/// target), a portable 8-accumulator loop otherwise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features `dot_avx2` is compiled for were detected at run time.
        return unsafe { dot_avx2(a, b) };
    }
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * j + 8 <= i + 32 <= n, so both 8-float loads are in bounds.
            let (va, vb) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i + 8 * j)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * j))) };
            *acc = _mm256_fmadd_ps(va, vb, *acc);
        }
        i += 32;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds exactly 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum::<f32>() + a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum::<f32>()
}

/// Both ceilings: a `gemm_n`-sided GEMM and a GEMV over `gemv_bytes`.
pub fn measure(gemm_n: usize, gemv_bytes: u64) -> Ceilings {
    let gemm = gemm_gflops(gemm_n, 5);
    let read = gemv_read_gbps(gemv_bytes, 7);
    Ceilings { gemm_n, gemm_gflops: gemm, gemv_bytes, read_gbps: read, threads: rayon::current_num_threads() }
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
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..77).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..77).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-3 * want.abs());
    }

    #[test]
    fn small_ceilings_are_positive() {
        let c = measure(64, 1 << 20);
        assert!(c.gemm_gflops > 0.0 && c.read_gbps > 0.0 && c.balance() > 0.0);
    }
}
