//! Tests of the float and FP8 kernels: the even/odd permutation, the FP8 tile decode bit for
//! bit against the lookup table, and every ISA and weight source against an f64 reference.
use super::*;

/// Every kernel set this CPU runs (so the AVX-512 cases are skipped where it has none, and
/// everything off x86-64).
pub(super) fn isas() -> Vec<Isa> {
    match arch::best_isa() {
        Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
        Some(Isa::Avx2) => vec![Isa::Avx2],
        None => Vec::new(),
    }
}

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

#[test]
fn fp8_decode_is_bit_identical_to_the_table() {
    let codes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let isas = isas();
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
#[test]
fn every_isa_and_source_matches_a_reference() {
    use crate::cpu::weight_slice::QuantSlice;
    use half::f16;
    let isas = isas();
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
                            let scale: f64 = (0..k).map(|p| (f64::from(a[i * k + p]) * dense[j * k + p]).abs()).sum();
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
