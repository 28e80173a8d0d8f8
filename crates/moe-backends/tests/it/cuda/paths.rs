//! GEMM paths of the CUDA backend for 16-bit float weights, against the reference.
//!
//! The warp-specialized TMA GEMM path (Hopper, 16-bit float weights, at
//! least 32 rows per slot on average) against the reference on ragged shapes: reduction
//! lengths that are not a multiple of its 64-column step (the copy engine zero-fills the
//! tail), channel counts that end inside a 128- or 256-column tile, slots whose last row tile
//! holds fewer than 64 rows (one consumer warpgroup idles), and many row tiles per slot.
//! On a GPU before Hopper the same cases take the `mma.sync` path and are checked the same way.
//!
//! The GEMV (decode: at most one row per slot on average) on reductions that end inside its
//! 1024-column step, and a slot with more rows than one pass of 8 takes.

use moe_backends::{CudaBackend, ReferenceBackend};
use moe_core::{Activation, DType};

use super::gpu_lock;
use crate::common::{activations, checkpoint, config, loaded, rel_l2, routing, run};

#[test]
fn tma_path_matches_the_reference_on_ragged_shapes() {
    let _gpu = gpu_lock();
    for dtype in [DType::BF16, DType::F16] {
        for (a, activation) in [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2]
            .into_iter()
            .enumerate()
        {
            // hidden 200 and intermediate 136: both GEMMs end their K loop on an 8-column
            // tail, FC1's channels end inside a tile, FC2's 200 columns inside a 256 tile.
            let mut c = config(4, 200, 136, 2, dtype);
            c.activation = activation;
            c.bias = a != 0;
            let src = checkpoint(&c, 40 + a as u64);
            let cuda: CudaBackend = loaded(&c, &src);
            let reference: ReferenceBackend = loaded(&c, &src);
            // 35 rows per slot on average (one partial tile), then 350 (three tiles, the
            // last one partial).
            for n in [70, 700] {
                let x = activations(n, c.hidden_size, dtype, 5 + n as u64);
                let (ids, w) = routing(n, 2, c.num_experts, 3 * n as u64);
                let want = run(&reference, &x, &ids, Some(&w), dtype);
                let got = run(&cuda, &x, &ids, Some(&w), dtype);
                let err = rel_l2(&got, &want);
                assert!(err <= 1e-2, "{dtype} {activation:?} n={n}: rel L2 {err:e}");
            }
        }
    }
}

#[test]
fn gemv_on_ragged_reductions_and_row_groups() {
    let _gpu = gpu_lock();
    // FC1 reduces over 1792 columns, FC2 over 2304: neither a multiple of 1024.
    for (a, activation) in [Activation::Swiglu, Activation::Relu2].into_iter().enumerate() {
        for dtype in [DType::BF16, DType::F16] {
            let mut c = config(4, 1792, 2304, 2, dtype);
            c.activation = activation;
            c.bias = a == 1;
            let src = checkpoint(&c, 90 + a as u64);
            let cuda: CudaBackend = loaded(&c, &src);
            let reference: ReferenceBackend = loaded(&c, &src);
            // One and two tokens: 2 and 4 selections over 4 slots (GEMV on every GPU).
            for n in [1, 2] {
                let x = activations(n, c.hidden_size, dtype, 17 + n as u64);
                let (ids, w) = routing(n, 2, c.num_experts, 5 + n as u64);
                let want = run(&reference, &x, &ids, Some(&w), dtype);
                let got = run(&cuda, &x, &ids, Some(&w), dtype);
                let err = rel_l2(&got, &want);
                assert!(err <= 1e-2, "{dtype} {activation:?} n={n}: rel L2 {err:e}");
            }
        }
    }
    // Twelve tokens on one of 16 slots: still one selection per slot on average (GEMV), but
    // that slot's rows take two groups of at most 8.
    let c = config(16, 512, 256, 1, DType::BF16);
    let src = checkpoint(&c, 95);
    let cuda: CudaBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(12, c.hidden_size, DType::BF16, 3);
    let ids = vec![3; 12];
    let w = vec![0.7; 12];
    let want = run(&reference, &x, &ids, Some(&w), DType::BF16);
    let got = run(&cuda, &x, &ids, Some(&w), DType::BF16);
    let err = rel_l2(&got, &want);
    assert!(err <= 1e-2, "12 rows on one slot: rel L2 {err:e}");
}

#[test]
fn tma_path_with_256_column_tiles_for_plain_gemms() {
    let _gpu = gpu_lock();
    // FC2 writes 4104 columns (17 tiles of 256, the last with 8 columns) over at least 32 row
    // tiles: 544 blocks, past the 4-waves-of-132 mark from which plain GEMMs take 256-column
    // tiles; FC1 (gated) takes them always, relu2's plain FC1 too at this size.
    for activation in [Activation::Swiglu, Activation::Relu2] {
        let mut c = config(4, 4104, 136, 2, DType::BF16);
        c.activation = activation;
        let src = checkpoint(&c, 60);
        let cuda: CudaBackend = loaded(&c, &src);
        let reference: ReferenceBackend = loaded(&c, &src);
        let n = 1800;
        let x = activations(n, c.hidden_size, DType::BF16, 8);
        let (ids, w) = routing(n, 2, c.num_experts, 9);
        let want = run(&reference, &x, &ids, Some(&w), DType::BF16);
        let got = run(&cuda, &x, &ids, Some(&w), DType::BF16);
        let err = rel_l2(&got, &want);
        assert!(err <= 1e-2, "{activation:?}: rel L2 {err:e}");
    }
}
