//! The FP8 x FP8 tensor-core path of the CUDA backend (E4M3 weights times E4M3 activation
//! codes) against the reference backend and the dequantized-weight oracle.
//!
//! The host round trips' layer (`quantized::SMALL`: hidden 256, 40 tokens) is too small to
//! reach the path's edges, so these cases build a larger one, [`SHAPE`]: 8 experts of hidden
//! 384, intermediate 256, top-2, 700 tokens. Hidden 384 makes FC1's K loop three 128-column
//! blocks (three block-scale promotions per output) and FC2's 384 output columns end inside
//! its second 256-column tile; 700 tokens x 2 / 8 slots = 175 rows per slot, two 128-row tiles
//! per slot, the second partial. Narrowed to 100 rows (25 per slot: one partial tile), to 24
//! rows (6 per slot on average: the GEMV's 16-row passes, some slots past 8 rows) and to 3 and
//! 1 rows (1 per slot, rounded up: its 8-row passes) the same layer takes the other kernels of
//! the path (`FP8_KERNELS`).
//!
//! Formats: FP8 block (128 x 128 weight blocks, dynamic 1 x 128 activation groups; SwiGLU, no
//! bias) and FP8 per-tensor (static input scales; SwiGLU with bias, and Relu2 with bias: not
//! gated, so FC1 has half the channels). For every row count the output is finite and within
//! relative L2 2e-2 of the reference backend fed its own `quantize_input` (the bound of
//! `packed_quantized_formats_match_the_dequantized_oracle_and_the_reference`: an activation
//! that lands across an E4M3 rounding midpoint moves its token's row by a grid step); for all
//! 700 rows (the oracle covers every token) it meets the format's §7.5 criterion against the
//! dequantized oracle. The measured errors are printed for the GPU run's log.

use moe_backends::{CudaBackend, ReferenceBackend};
use moe_core::{Activation, DType, MoeBackend, QuantAlgo};

use super::gpu_lock;
use crate::common::{loaded, rel_l2, run_payload};
use crate::quantized::{Case, Shape, case_with, check_accuracy, tolerance};

/// The layer of these cases (see the module docs for what each size reaches).
const SHAPE: Shape = Shape {
    experts: 8,
    hidden: 384,
    inter: 256,
    top_k: 2,
    tokens: 700,
};

/// Row counts the forward is narrowed to: two TMA row tiles per slot (one partial), one
/// partial tile, then the GEMV.
const ROWS: [usize; 5] = [700, 100, 24, 3, 1];

/// CUDA against the reference backend on the same rows, relative L2.
const VS_REFERENCE: f64 = 2e-2;

#[test]
fn fp8_tensor_core_path_matches_the_reference_and_the_dequantized_oracle() {
    let _gpu = gpu_lock();
    for (algo, act, bias) in [
        (QuantAlgo::Fp8Block, Activation::Swiglu, false),
        (QuantAlgo::Fp8PerTensor, Activation::Swiglu, true),
        (QuantAlgo::Fp8PerTensor, Activation::Relu2, true),
    ] {
        let k = case_with(algo, act, bias, 31 + algo as u64, SHAPE);
        for rows in ROWS {
            check_rows(&k, algo, &format!("{algo:?} {act:?} bias={bias}"), rows);
        }
    }
}

/// A layer wide enough that the GEMV's second pass of 8 rows would miss the L2 (hidden 4608:
/// 396 resident blocks of the gated FC1 x 147 KB > 50 MB on an H100 or H200), at 6 rows per
/// slot: FC1 takes the passes of 16 rows (`gemv_rows_per_pass`), some slots past 8 rows.
#[test]
fn wide_layer_takes_the_gemv_passes_of_16_rows() {
    let _gpu = gpu_lock();
    let shape = Shape {
        hidden: 4608,
        tokens: 24,
        ..SHAPE
    };
    let algo = QuantAlgo::Fp8Block;
    let k = case_with(algo, Activation::Swiglu, false, 47, shape);
    check_rows(&k, algo, "Fp8Block Swiglu hidden=4608", shape.tokens);
}

/// The first `rows` tokens of case `k` through the CUDA and the reference backends, each fed its
/// own quantized payload: finite, within [`VS_REFERENCE`], and for all tokens within the
/// format's criterion against the dequantized oracle. Prints the measured errors.
fn check_rows(k: &Case, algo: QuantAlgo, what: &str, rows: usize) {
    let cuda: CudaBackend = loaded(&k.c, &k.src);
    let reference: ReferenceBackend = loaded(&k.c, &k.src);
    assert_eq!(cuda.quant_method().algo(), algo);
    let top_k = k.shape.top_k;
    let x = k.x.narrow_rows(0, rows).unwrap();
    let (ids, w) = (&k.ids[..rows * top_k], &k.w[..rows * top_k]);
    let q_cuda = cuda.quantize_input(&x).unwrap();
    let q_ref = reference.quantize_input(&x).unwrap();
    let got = run_payload(&cuda, &q_cuda.x, q_cuda.x_sf.as_ref(), ids, Some(w), DType::F32);
    let want_ref = run_payload(&reference, &q_ref.x, q_ref.x_sf.as_ref(), ids, Some(w), DType::F32);
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what} rows={rows}: output {i} is {}", got[i]);
    }
    if rows == k.shape.tokens {
        let acc = check_accuracy(&got, &k.want, tolerance(algo, &k.want))
            .unwrap_or_else(|e| panic!("{what}: cuda vs dequantized oracle: {e}"));
        println!(
            "{what} rows={rows}: vs oracle rel L2 {:.2e} max|d| {:.2e} mismatch {:.4}",
            acc.rel_l2, acc.max_abs_diff, acc.mismatch_fraction
        );
    }
    let between = rel_l2(&got, &want_ref);
    println!("{what} rows={rows}: cuda vs reference rel L2 {between:.2e}");
    assert!(
        between <= VS_REFERENCE,
        "{what} rows={rows}: cuda vs reference rel L2 {between:e}"
    );
}
