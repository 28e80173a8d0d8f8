//! Tests of the packed-format decode kernels (INT4 signed and with zero points, NVFP4, MXFP4,
//! INT8, FP8 per tensor) against `widen_into` followed by a plain dot product: every ISA of
//! this CPU, 1 to 5 rows of `A`, row counts that are not a multiple of the tile, several scale
//! groups, 1 or 3 workers; and the NaN / infinity pattern of special activations and scales.

use super::tests::isas;
use super::*;
use crate::cpu::weight_slice::QuantSlice;

/// Deterministic bytes and floats (a 64-bit LCG; the tests need spread, not quality).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// Uniform in `[-0.5, 0.5)`.
    fn unit(&mut self) -> f32 {
        (self.next() & 0xFF_FFFF) as f32 / (1u32 << 24) as f32 - 0.5
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The codes and scales of one packed `[n, k]` matrix, owned.
struct Owned {
    codes: Vec<u8>,
    scales: Vec<f32>,
    scale_bytes: Vec<u8>,
    zeros: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Int4 { group: usize, zeros: bool },
    Nvfp4 { global: f32 },
    Mxfp4,
    Int8,
    Fp8PerTensor { scale: f32 },
}

impl Format {
    /// Random codes and ordinary scales (E4M3 block scales 0x30..0x4F, UE8M0 near 2^0).
    fn generate(self, n: usize, k: usize, rng: &mut Lcg) -> Owned {
        let mut o = Owned {
            codes: Vec::new(),
            scales: Vec::new(),
            scale_bytes: Vec::new(),
            zeros: None,
        };
        match self {
            Format::Int4 { group, zeros } => {
                o.codes = rng.bytes(n * k / 2);
                o.scales = (0..n * k / group).map(|_| 0.02 + 0.1 * rng.unit()).collect();
                // Zero points past 15 too: `q - z` is taken in integers, whatever `z`.
                o.zeros = zeros.then(|| {
                    (0..n * k / group)
                        .map(|i| if i % 7 == 3 { 200 } else { rng.byte() & 15 })
                        .collect()
                });
            }
            Format::Nvfp4 { .. } => {
                o.codes = rng.bytes(n * k / 2);
                o.scale_bytes = (0..n * k / 16).map(|_| 0x30 + (rng.byte() & 0x1F)).collect();
            }
            Format::Mxfp4 => {
                o.codes = rng.bytes(n * k / 2);
                o.scale_bytes = (0..n * k / 32).map(|_| 122 + (rng.byte() & 7)).collect();
            }
            Format::Int8 => {
                o.codes = rng.bytes(n * k);
                o.scales = (0..n).map(|_| 0.01 + 0.02 * rng.unit()).collect();
            }
            Format::Fp8PerTensor { .. } => {
                // No NaN codes here (those are the FP8 tests' business).
                o.codes = (0..n * k).map(|_| rng.byte() & 0xF7).collect();
            }
        }
        o
    }

    fn matrix(self, o: &Owned) -> QuantMatrix<'_> {
        match self {
            Format::Int4 { group, .. } => QuantMatrix::Int4Group {
                packed: &o.codes,
                scales: &o.scales,
                zeros: o.zeros.as_deref(),
                group,
            },
            Format::Nvfp4 { global } => QuantMatrix::Nvfp4 {
                packed: &o.codes,
                block_scales: &o.scale_bytes,
                global,
            },
            Format::Mxfp4 => QuantMatrix::Mxfp4 {
                packed: &o.codes,
                scales: &o.scale_bytes,
            },
            Format::Int8 => QuantMatrix::Int8Channel {
                codes: &o.codes,
                scales: &o.scales,
            },
            Format::Fp8PerTensor { scale } => QuantMatrix::Fp8PerTensor { codes: &o.codes, scale },
        }
    }
}

/// Runs `a · w^T` on every ISA and worker count and compares each output with the reference
/// built from `widen_into`: the NaN / infinity pattern of a plain f32 dot product exactly, the
/// value within a tolerance relative to `sum |a * w|` (the kernels sum in another order, and
/// the 4-bit ones round the activations to 16 bits per chunk: at most half a step of
/// `max |a| / 32767` each).
fn check(what: &str, a: &[f32], w: QuantSlice<'_>, m: usize) {
    let (n, k) = (w.rows, w.cols);
    let w: WeightSlice<'_> = w.into();
    let mut dense = vec![0.0f32; n * k];
    w.widen_into(0, &mut dense).unwrap();
    for isa in isas() {
        for threads in [1, 3] {
            let mut c = vec![f32::NAN; m * n];
            matmul_bt_simd(isa, a, w, &mut c, m, n, k, threads, &mut SimdScratch::default()).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let (ar, wr) = (&a[i * k..(i + 1) * k], &dense[j * k..(j + 1) * k]);
                    let plain = ar.iter().zip(wr).fold(0.0f32, |s, (&x, &y)| s + x * y);
                    let want: f64 = ar.iter().zip(wr).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                    let mag: f64 = ar
                        .iter()
                        .zip(wr)
                        .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
                        .sum();
                    let got = c[i * n + j];
                    let at = format!("{what} {isa:?} t={threads} {m}x{n}x{k} ({i},{j}): {got} vs {plain}");
                    if plain.is_nan() || plain.is_infinite() {
                        assert!(
                            got.to_bits() == plain.to_bits() || (got.is_nan() && plain.is_nan()),
                            "{at}"
                        );
                    } else {
                        assert!((f64::from(got) - want).abs() <= 1e-5 * (1.0 + mag), "{at}");
                    }
                }
            }
        }
    }
}

/// Formats with the `k`s to run them at: kernel shapes (whole chunks of 128 weights, 64 on
/// AVX2; groups smaller than, equal to and larger than a chunk) and ones that take the
/// widening path (a `k` of partial chunks, a group not a multiple of 8). The last `k` of each
/// is whole chunks on both ISAs.
fn formats() -> Vec<(Format, Vec<usize>)> {
    vec![
        (Format::Int4 { group: 8, zeros: false }, vec![128]),
        (
            Format::Int4 {
                group: 16,
                zeros: false,
            },
            vec![48, 128, 384],
        ),
        (Format::Int4 { group: 32, zeros: true }, vec![96, 256]),
        (
            Format::Int4 {
                group: 64,
                zeros: false,
            },
            vec![192, 512],
        ),
        (
            Format::Int4 {
                group: 128,
                zeros: false,
            },
            vec![384],
        ),
        (
            Format::Int4 {
                group: 128,
                zeros: true,
            },
            vec![2048, 256],
        ),
        (
            Format::Int4 {
                group: 256,
                zeros: true,
            },
            vec![768],
        ),
        (Format::Int4 { group: 6, zeros: false }, vec![48, 384]),
        (Format::Nvfp4 { global: 0.37 }, vec![48, 272, 128, 640]),
        (Format::Mxfp4, vec![96, 320, 512]),
        (Format::Int8, vec![5, 16, 37, 100, 2051]),
        (Format::Fp8PerTensor { scale: 0.013 }, vec![7, 128, 300]),
    ]
}

#[test]
fn packed_kernels_match_the_widened_reference() {
    let mut rng = Lcg(11);
    for (format, ks) in formats() {
        for k in ks {
            for (m, n) in [(1usize, 1usize), (1, 7), (2, 4), (3, 13), (4, 5), (5, 9)] {
                let o = format.generate(n, k, &mut rng);
                let w = QuantSlice::new("w", n, k, format.matrix(&o)).unwrap();
                let a: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
                check(&format!("{format:?}"), &a, w, m);
            }
        }
    }
}

/// NaN and infinite activations, and scales that are NaN, infinite, zero or so large that a
/// weight overflows: every output's NaN / infinity as the widened reference has it.
#[test]
fn packed_kernels_keep_nan_and_infinity_semantics() {
    let mut rng = Lcg(23);
    let (m, n) = (4usize, 11usize);
    for (format, ks) in formats() {
        let k = ks[ks.len() - 1];
        let mut o = format.generate(n, k, &mut rng);
        // Row 1: one NaN scale; row 2: an infinite one; row 3: zero; row 4: huge (`q * s`
        // overflows); the other rows ordinary.
        match format {
            Format::Int4 { group, .. } => {
                let per_row = k / group;
                for (row, v) in [(1, f32::NAN), (2, f32::INFINITY), (3, 0.0), (4, 1.0e38)] {
                    o.scales[row * per_row + per_row - 1] = v;
                }
            }
            Format::Int8 => {
                for (row, v) in [(1, f32::NAN), (2, f32::NEG_INFINITY), (3, 0.0), (4, 3.0e37)] {
                    o.scales[row] = v;
                }
            }
            Format::Nvfp4 { .. } => {
                let per_row = k / 16;
                // E4M3 NaN, the largest code (448, then times a huge global below), zero.
                for (row, v) in [(1, 0x7F), (2, 0x7E), (3, 0x00)] {
                    o.scale_bytes[row * per_row] = v;
                }
            }
            Format::Mxfp4 => {
                let per_row = k / 32;
                // UE8M0 NaN, 2^127 (6 * 2^127 overflows), 2^-127.
                for (row, v) in [(1, 0xFF), (2, 0xFE), (3, 0x00)] {
                    o.scale_bytes[row * per_row] = v;
                }
            }
            Format::Fp8PerTensor { .. } => {}
        }
        let formats_here: Vec<Format> = match format {
            Format::Nvfp4 { .. } => vec![Format::Nvfp4 { global: 0.37 }, Format::Nvfp4 { global: 1.0e36 }],
            Format::Fp8PerTensor { .. } => vec![
                Format::Fp8PerTensor { scale: f32::NAN },
                Format::Fp8PerTensor { scale: f32::INFINITY },
                Format::Fp8PerTensor { scale: 0.0 },
                Format::Fp8PerTensor { scale: 0.5 },
            ],
            f => vec![f],
        };
        for f in formats_here {
            let w = QuantSlice::new("w", n, k, f.matrix(&o)).unwrap();
            // Finite activations first (INT4 runs its kernel only on those), then: row 0
            // ordinary, row 1 a NaN, row 2 an infinity, row 3 both infinities.
            let mut a: Vec<f32> = (0..m * k).map(|_| rng.unit()).collect();
            check(&format!("{f:?} special scales"), &a, w, m);
            a[k + k / 2] = f32::NAN;
            a[2 * k + 3] = f32::INFINITY;
            a[3 * k] = f32::INFINITY;
            a[3 * k + k - 1] = f32::NEG_INFINITY;
            check(&format!("{f:?} special"), &a, w, m);
        }
    }
}

/// The kernels' E2M1 table and branch-free UE8M0 decode are the codec's.
#[test]
fn e2m1_table_and_e8m0_select_match_the_codec() {
    for (c, &v) in packed::E2M1_X2.iter().enumerate() {
        assert_eq!(f32::from(v), 2.0 * crate::codec::fp4::E2M1_VALUES[c], "code {c}");
    }
    for q in 0..=255u8 {
        let (got, want) = (packed_rows::e8m0_select(q), crate::codec::e8m0::e8m0_to_f32(q));
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{q}"
        );
    }
}
