//! The warp-specialized TMA GEMM path of the CUDA backend (Hopper, 16-bit float weights, at
//! least 32 rows per slot on average) against the reference on ragged shapes: reduction
//! lengths that are not a multiple of its 64-column step (the copy engine zero-fills the
//! tail), channel counts that end inside a 128- or 256-column tile, slots whose last row tile
//! holds fewer than 64 rows (one consumer warpgroup idles), and many row tiles per slot.
//! On a GPU before Hopper the same cases take the `mma.sync` path and are checked the same way.

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
