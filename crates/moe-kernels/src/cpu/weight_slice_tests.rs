//! Tests of [`super::WeightSlice`]: every format decodes to what the codecs define, `at` and
//! `widen_into` agree bit for bit, and malformed slices are shape errors naming the part.

use super::*;
use crate::codec::e8m0::e8m0_to_f32;
use crate::codec::fp4::decode_fp4_packed;
use crate::codec::fp8::e4m3_to_f32;
use crate::codec::int::{Int4Grouped, dequantize_int8_per_channel};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Checks `q` against `want` (row-major) through `at`, whole-matrix and per-row `widen_into`.
fn check_decodes(q: QuantSlice<'_>, want: &[f32]) {
    let w = WeightSlice::Quant(q);
    assert_eq!(w.len(), want.len());
    for (i, &v) in want.iter().enumerate() {
        assert!(same(w.at(i), v), "at({i}) = {} vs {v}", w.at(i));
    }
    let mut all = vec![0.0; want.len()];
    w.widen_into(0, &mut all).unwrap();
    let mut row = vec![0.0; q.cols];
    for r in 0..q.rows {
        w.widen_into(r * q.cols, &mut row).unwrap();
        for c in 0..q.cols {
            assert!(same(row[c], want[r * q.cols + c]), "row {r} col {c}");
            assert!(same(all[r * q.cols + c], want[r * q.cols + c]));
        }
    }
}

#[test]
fn fp8_formats_decode_as_the_codec() {
    let (rows, cols) = (5, 300);
    let codes = bytes(rows * cols, 1);
    let want: Vec<f32> = codes.iter().map(|&c| e4m3_to_f32(c) * 0.25).collect();
    check_decodes(
        QuantSlice::new(
            "w",
            rows,
            cols,
            QuantMatrix::Fp8PerTensor {
                codes: &codes,
                scale: 0.25,
            },
        )
        .unwrap(),
        &want,
    );

    // Partial blocks in both directions: 5 rows over blocks of 2, 300 columns over 128.
    let block = [2, 128];
    let scales: Vec<f32> = (0..3 * 3).map(|i| 0.5 + i as f32).collect();
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| e4m3_to_f32(codes[i]) * scales[(i / cols / 2) * 3 + (i % cols) / 128])
        .collect();
    let q = QuantSlice::new(
        "w",
        rows,
        cols,
        QuantMatrix::Fp8Block {
            codes: &codes,
            scales: &scales,
            block,
        },
    )
    .unwrap();
    check_decodes(q, &want);
}

#[test]
fn fp4_formats_decode_as_the_codec() {
    let (rows, cols) = (3, 64);
    let packed = bytes(rows * cols / 2, 2);
    let mut e2m1 = vec![0.0; rows * cols];
    decode_fp4_packed(&packed, &mut e2m1).unwrap();

    // NVFP4: finite E4M3 block scales (0x00..0x7E) times a global scale.
    let sf: Vec<u8> = bytes(rows * cols / 16, 3).into_iter().map(|b| b % 0x7F).collect();
    let global = 0.3f32;
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| e2m1[i] * (e4m3_to_f32(sf[i / 16]) * global))
        .collect();
    let m = QuantMatrix::Nvfp4 {
        packed: &packed,
        block_scales: &sf,
        global,
    };
    check_decodes(QuantSlice::new("w", rows, cols, m).unwrap(), &want);

    // MXFP4: UE8M0 scales around 2^0.
    let sc: Vec<u8> = bytes(rows * cols / 32, 4).into_iter().map(|b| 120 + b % 15).collect();
    let want: Vec<f32> = (0..rows * cols).map(|i| e2m1[i] * e8m0_to_f32(sc[i / 32])).collect();
    check_decodes(
        QuantSlice::new(
            "w",
            rows,
            cols,
            QuantMatrix::Mxfp4 {
                packed: &packed,
                scales: &sc,
            },
        )
        .unwrap(),
        &want,
    );
}

#[test]
fn integer_formats_decode_as_the_codec() {
    let (rows, cols, group) = (4, 256, 128);
    let packed = bytes(rows * cols / 2, 5);
    let scales: Vec<f32> = (0..rows * cols / group).map(|i| 0.01 * (i + 1) as f32).collect();
    let zeros: Vec<u8> = bytes(rows * cols / group, 6).into_iter().map(|b| b % 16).collect();
    for z in [Some(zeros.clone()), None] {
        let reference = Int4Grouped {
            rows,
            cols,
            group_size: group,
            packed: packed.clone(),
            scales: scales.clone(),
            zeros: z.clone(),
        };
        let want = reference.dequantize().unwrap();
        let m = QuantMatrix::Int4Group {
            packed: &packed,
            scales: &scales,
            zeros: z.as_deref(),
            group,
        };
        check_decodes(QuantSlice::new("w", rows, cols, m).unwrap(), &want);
    }

    let codes = bytes(rows * cols, 7);
    let ch: Vec<f32> = (0..rows).map(|r| 0.5 / (r + 1) as f32).collect();
    let signed: Vec<i8> = codes.iter().map(|&b| b as i8).collect();
    let want = dequantize_int8_per_channel(&signed, &ch, rows, cols).unwrap();
    check_decodes(
        QuantSlice::new(
            "w",
            rows,
            cols,
            QuantMatrix::Int8Channel {
                codes: &codes,
                scales: &ch,
            },
        )
        .unwrap(),
        &want,
    );
}

#[test]
fn malformed_slices_are_shape_errors_naming_the_part() {
    let part = |r: Result<QuantSlice<'_>>| match r {
        Err(MoeError::ShapeMismatch { what, .. }) => what,
        other => panic!("expected ShapeMismatch, got {other:?}"),
    };
    let b = [0u8; 64];
    let f = [1.0f32; 8];
    let nv = |p: usize, s: usize| QuantMatrix::Nvfp4 {
        packed: &b[..p],
        block_scales: &b[..s],
        global: 1.0,
    };
    assert_eq!(part(QuantSlice::new("w2", 2, 16, nv(15, 2))), "w2.packed");
    assert_eq!(part(QuantSlice::new("w2", 2, 16, nv(16, 3))), "w2.block_scales");
    assert_eq!(
        part(QuantSlice::new(
            "w",
            2,
            10,
            QuantMatrix::Nvfp4 {
                packed: &b[..10],
                block_scales: &b[..1],
                global: 1.0
            }
        )),
        "w"
    );
    assert_eq!(
        part(QuantSlice::new(
            "w",
            1,
            32,
            QuantMatrix::Mxfp4 {
                packed: &b[..16],
                scales: &b[..2]
            }
        )),
        "w.scales"
    );
    assert_eq!(
        part(QuantSlice::new(
            "w",
            3,
            3,
            QuantMatrix::Fp8Block {
                codes: &b[..9],
                scales: &f[..2],
                block: [2, 2]
            }
        )),
        "w.scales"
    );
    assert_eq!(
        part(QuantSlice::new(
            "w",
            1,
            4,
            QuantMatrix::Fp8Block {
                codes: &b[..4],
                scales: &f[..1],
                block: [0, 2]
            }
        )),
        "w"
    );
    let m = QuantMatrix::Int4Group {
        packed: &b[..4],
        scales: &f[..2],
        zeros: Some(&b[..1]),
        group: 4,
    };
    assert_eq!(part(QuantSlice::new("w", 1, 8, m)), "w.zeros");
    let m = QuantMatrix::Int4Group {
        packed: &b[..4],
        scales: &f[..3],
        zeros: None,
        group: 3,
    };
    assert_eq!(part(QuantSlice::new("w", 1, 9, m)), "w");
    assert_eq!(
        part(QuantSlice::new(
            "w",
            2,
            2,
            QuantMatrix::Int8Channel {
                codes: &b[..4],
                scales: &f[..1]
            }
        )),
        "w.scales"
    );
    assert_eq!(
        part(QuantSlice::new(
            "w",
            2,
            2,
            QuantMatrix::Fp8PerTensor {
                codes: &b[..3],
                scale: 1.0
            }
        )),
        "w.codes"
    );
    assert_eq!(
        part(QuantSlice::new(
            "w",
            usize::MAX,
            2,
            QuantMatrix::Fp8PerTensor { codes: &b, scale: 1.0 }
        )),
        "w"
    );
}

#[test]
fn quantized_widening_takes_whole_rows_only() {
    let codes = [0x38u8; 8]; // e4m3 1.0
    let w = WeightSlice::Quant(
        QuantSlice::new(
            "w",
            2,
            4,
            QuantMatrix::Fp8PerTensor {
                codes: &codes,
                scale: 2.0,
            },
        )
        .unwrap(),
    );
    let mut out = [0.0; 4];
    w.widen_into(4, &mut out).unwrap();
    assert_eq!(out, [2.0; 4]);
    assert!(w.widen_into(2, &mut out).is_err(), "not row-aligned");
    assert!(w.widen_into(8, &mut out).is_err(), "past the end");
    assert!(w.widen_into(0, &mut out[..3]).is_err(), "partial row");
    w.widen_into(8, &mut []).unwrap();
    // A hand-built slice that lies about its shape is refused, not read out of bounds.
    let bad = WeightSlice::Quant(QuantSlice {
        rows: 4,
        cols: 4,
        matrix: QuantMatrix::Fp8PerTensor {
            codes: &codes,
            scale: 1.0,
        },
    });
    assert!(matches!(
        bad.widen_into(8, &mut out),
        Err(MoeError::ShapeMismatch { .. })
    ));
    assert!(bad.check_operand("gemm weights", 4, 4).is_err());
    assert!(w.check_operand("gemm weights", 4, 2).is_err());
    w.check_operand("gemm weights", 2, 4).unwrap();
}
