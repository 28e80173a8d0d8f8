//! Measured ceilings of a device: device-to-device copy bandwidth and the bf16 and FP8 (e4m3)
//! matrix-product rates.
//!
//! Both are what the device does on a plain, large problem in this process, timed with device
//! events on the device's stream: a few untimed runs first (clocks up, cuBLAS heuristics and
//! workspaces settled), then the median of `iters` timed runs. They bound what a layer can do
//! (`moe bench --backend cuda` holds every row to `max(bytes / copy, FLOPs / matmul)`).
//!
//! - [`copy_bandwidth_gbps`]: one `cuMemcpyDtoD` of `bytes` bytes, counting the bytes read and
//!   the bytes written (`2 * bytes` per copy), as `nvbandwidth` and torch's copy benchmarks do;
//! - [`bf16_matmul_tflops`]: cuBLAS `n x n x n` GEMM with bf16 inputs and output and f32
//!   accumulation (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`), on random data (zeros would let the
//!   tensor cores idle at lower power and overstate the rate);
//! - [`fp8_matmul_tflops`]: cuBLASLt `n x n x n` GEMM with e4m3 inputs, bf16 output and f32
//!   accumulation (`cublasLtMatmul`, the "TN" layout cuBLASLt takes for FP8, no scale
//!   pointers, a 32 MiB workspace, the heuristic's first algorithm), on random e4m3 codes of
//!   magnitude 1/16 to 2 (no NaN codes), the rate the floors of FP8-weight rows use.

use std::panic::AssertUnwindSafe;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::GemmConfig;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::CudaSlice;
use half::bf16;
use moe_core::{MoeError, Result};
use rayon::prelude::*;

use super::device::{CudaDevice, dev_err};
use super::ffi;
use super::ffi_cublaslt::Fp8Gemm;

/// Untimed runs before the timed ones.
const WARMUP: usize = 3;

/// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written per second): the
/// median of `iters` timed copies of a `bytes`-byte buffer after a warm-up.
pub fn copy_bandwidth_gbps(dev: &CudaDevice, bytes: usize, iters: usize) -> Result<f64> {
    positive("copy_bandwidth_gbps", "bytes", bytes)?;
    positive("copy_bandwidth_gbps", "iters", iters)?;
    let loc = dev.location();
    let stream = dev.stream();
    // Real contents rather than a fresh allocation: the copy then moves what a layer would.
    let host = random_bytes(bytes, 0x5EED_C0B1);
    let src: CudaSlice<u8> = stream
        .clone_htod(&host)
        .map_err(|e| dev_err(&loc, "uploading the copy source", e))?;
    drop(host);
    let mut dst: CudaSlice<u8> = stream
        .alloc_zeros(bytes)
        .map_err(|e| dev_err(&loc, "allocating the copy destination", e))?;
    let mut copy = || {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| dev_err(&loc, "device-to-device copy", e))
    };
    let ms = timed_median(dev, iters, &mut copy)?;
    Ok(2.0 * bytes as f64 / (ms * 1e-3) / 1e9)
}

/// bf16 matrix-product rate in TFLOP/s (`2 n^3` FLOPs per product): cuBLAS `n x n x n` with
/// bf16 inputs and output and f32 accumulation on random data, the median of `iters` timed
/// products after a warm-up.
pub fn bf16_matmul_tflops(dev: &CudaDevice, n: usize, iters: usize) -> Result<f64> {
    positive("bf16_matmul_tflops", "n", n)?;
    positive("bf16_matmul_tflops", "iters", iters)?;
    let side = i32::try_from(n).map_err(|_| MoeError::config("n", format!("{n} does not fit a cuBLAS dimension")))?;
    let loc = dev.location();
    let stream = dev.stream();
    let upload = |seed: u64, what: &str| -> Result<CudaSlice<bf16>> {
        let host = random_bf16(n * n, seed);
        stream.clone_htod(&host).map_err(|e| dev_err(&loc, what, e))
    };
    let a = upload(0xA11C_E5ED, "uploading the matmul's A")?;
    let b = upload(0xB0B5_EED5, "uploading the matmul's B")?;
    let mut c: CudaSlice<bf16> = stream
        .alloc_zeros(n * n)
        .map_err(|e| dev_err(&loc, "allocating the matmul's C", e))?;
    // cudarc panics when it cannot open libcublas (dynamic loading): report it as an error
    // naming the fix instead of aborting the caller.
    let blas = std::panic::catch_unwind(AssertUnwindSafe(|| CudaBlas::new(stream.clone())))
        .map_err(|_| {
            MoeError::Backend(
                format!("{loc}: cuBLAS could not be loaded (is libcublas on LD_LIBRARY_PATH? source gpu-env.sh)")
                    .into(),
            )
        })?
        .map_err(|e| dev_err(&loc, "creating the cuBLAS handle", e))?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: side,
        n: side,
        k: side,
        alpha: bf16::ONE,
        lda: side,
        ldb: side,
        beta: bf16::ZERO,
        ldc: side,
    };
    let mut product = || ffi::gemm_bf16(&blas, cfg, &a, &b, &mut c, &loc);
    let ms = timed_median(dev, iters, &mut product)?;
    Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12)
}

/// FP8 matrix-product rate in TFLOP/s (`2 n^3` FLOPs per product): cuBLASLt `n x n x n`
/// with e4m3 inputs, bf16 output and f32 accumulation on random codes, the median of `iters`
/// timed products after a warm-up. `n` must be a multiple of 16 (FP8 leading dimensions are
/// 16-byte aligned); an error on devices without FP8 tensor cores (compute capability below
/// 8.9) or without libcublasLt.
pub fn fp8_matmul_tflops(dev: &CudaDevice, n: usize, iters: usize) -> Result<f64> {
    positive("fp8_matmul_tflops", "n", n)?;
    positive("fp8_matmul_tflops", "iters", iters)?;
    if !n.is_multiple_of(16) {
        return Err(MoeError::config(
            "n",
            format!("fp8_matmul_tflops: {n} is not a multiple of 16 (cuBLASLt's FP8 alignment)"),
        ));
    }
    let loc = dev.location();
    let stream = dev.stream();
    let upload = |seed: u64, what: &str| -> Result<CudaSlice<u8>> {
        let host = random_e4m3(n * n, seed);
        stream.clone_htod(&host).map_err(|e| dev_err(&loc, what, e))
    };
    let a = upload(0xF8A1_C0DE, "uploading the FP8 matmul's A")?;
    let b = upload(0xF8B2_C0DE, "uploading the FP8 matmul's B")?;
    let mut d: CudaSlice<bf16> = stream
        .alloc_zeros(n * n)
        .map_err(|e| dev_err(&loc, "allocating the FP8 matmul's D", e))?;
    let gemm = Fp8Gemm::new(stream, n, n, n, &loc)?;
    let mut product = || gemm.run(&a, &b, &mut d);
    let ms = timed_median(dev, iters, &mut product)?;
    Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12)
}

fn positive(what: &str, field: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(MoeError::config(field, format!("{what}: must be positive")));
    }
    Ok(())
}

/// Runs `op` [`WARMUP`] times untimed, then `iters` times each between two device events;
/// returns the median in milliseconds.
fn timed_median(dev: &CudaDevice, iters: usize, op: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        op()?;
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let timer = dev.timer()?;
        op()?;
        times.push(timer.stop_ms()?);
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    Ok(if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    })
}

/// splitmix64 of `x` (one output per counter value, so chunks fill in parallel).
fn mix(x: u64) -> u64 {
    moe_core::prng::mix64(x.wrapping_add(moe_core::prng::GAMMA))
}

/// `len` pseudo-random bytes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        for (i, w) in chunk.chunks_mut(8).enumerate() {
            let r = mix(seed ^ (((c as u64) << 16) + i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).to_le_bytes();
            w.copy_from_slice(&r[..w.len()]);
        }
    });
    v
}

/// `len` bf16 values uniform in [-1, 1).
fn random_bf16(len: usize, seed: u64) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        for (i, x) in chunk.iter_mut().enumerate() {
            let r = mix(seed ^ (((c as u64) << 16) + i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            *x = bf16::from_f32((r >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
        }
    });
    v
}

/// `len` random e4m3 codes: random sign, magnitude 2^-4 to just under 2 (biased exponents 3 to
/// 7, any mantissa), so no NaN code (`0x7f`, `0xff`), no zero and no overflow of the bf16
/// output over a long reduction.
fn random_e4m3(len: usize, seed: u64) -> Vec<u8> {
    let mut v = random_bytes(len, seed);
    v.par_iter_mut().for_each(|c| *c = e4m3_of_byte(*c));
    v
}

/// The e4m3 code a random byte maps to (see [`random_e4m3`]): `0x18..0x40` is exponent 3..7.
fn e4m3_of_byte(r: u8) -> u8 {
    (r & 0x80) | (0x18 + (r & 0x7f) % 0x28)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_e4m3_codes_are_finite_and_in_range() {
        for r in 0..=255u8 {
            let c = e4m3_of_byte(r);
            let mag = c & 0x7f;
            assert!((0x18..0x40).contains(&mag), "{r:#04x} -> {c:#04x}");
            assert_eq!(c & 0x80, r & 0x80);
        }
        let v = random_e4m3(1 << 17, 3);
        assert!(v.iter().all(|&c| c & 0x7f != 0x7f));
        // Both signs and every magnitude code appear.
        assert!(v.iter().any(|&c| c & 0x80 != 0) && v.iter().any(|&c| c & 0x80 == 0));
        assert_eq!(
            v.iter()
                .map(|&c| c & 0x7f)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            0x28
        );
    }

    /// The cuBLASLt product is the one `Fp8Gemm` documents (`D = Aᵀ · B`, column-major, A
    /// stored `[k, m]`), against the host on a small ragged problem, and the rate comes out
    /// positive; a device without FP8 tensor cores (below sm_89) gets a typed error instead.
    #[test]
    fn fp8_gemm_matches_the_host_product() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let (m, n, k) = (64, 40, 96);
        let loc = dev.location();
        let stream = dev.stream();
        let gemm = Fp8Gemm::new(stream, m, n, k, &loc);
        if dev.sm() < 89 {
            assert!(gemm.is_err(), "sm_{} has no FP8 GEMM", dev.sm());
            assert!(fp8_matmul_tflops(&dev, 256, 2).is_err());
            return Ok(());
        }
        let gemm = gemm?;
        let (ha, hb) = (random_e4m3(k * m, 1), random_e4m3(k * n, 2));
        let a = stream.clone_htod(&ha).map_err(|e| dev_err(&loc, "upload", e))?;
        let b = stream.clone_htod(&hb).map_err(|e| dev_err(&loc, "upload", e))?;
        let mut d: CudaSlice<bf16> = stream.alloc_zeros(m * n).map_err(|e| dev_err(&loc, "alloc", e))?;
        gemm.run(&a, &b, &mut d)?;
        let got = stream.clone_dtoh(&d).map_err(|e| dev_err(&loc, "download", e))?;
        dev.synchronize()?;
        let dec = |c: u8| f64::from(crate::codec::fp8::e4m3_to_f32_lut(c));
        for j in 0..n {
            for i in 0..m {
                let (mut want, mut mag) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    let p = dec(ha[i * k + kk]) * dec(hb[j * k + kk]);
                    want += p;
                    mag += p.abs();
                }
                let g = f64::from(got[j * m + i].to_f32());
                // bf16 output rounding (2^-9 relative), plus the tensor cores' FP8 accumulation,
                // which keeps fewer bits than f32 (Hopper: about 2^-13 of the magnitude sum).
                assert!(
                    (g - want).abs() <= 4e-3 * want.abs() + 1e-4 * mag,
                    "D[{i}, {j}] = {g}, host {want}"
                );
            }
        }
        drop(gemm);
        let rate = fp8_matmul_tflops(&dev, 1024, 3)?;
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert!(fp8_matmul_tflops(&dev, 1000, 1).is_err(), "n must be a multiple of 16");
        Ok(())
    }
}
