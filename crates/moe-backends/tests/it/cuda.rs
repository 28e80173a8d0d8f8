//! The CUDA backend against the reference oracle (built with `--features cuda`; run on the GPU
//! machine from the bundle). Random layers over every dtype, activation, bias and top-k, with
//! token counts that take each GEMM path (GEMV for few rows per slot and every f32 layer, the
//! tensor-core kernel with 32-, 64- and 128-row tiles), device-resident inputs, an EP rank
//! that holds only part of the slots, and the packed quantized formats; [`graph`]: the forward
//! captured into a CUDA graph and replayed; [`paths`]: the TMA GEMM and the 16-bit GEMV on ragged and long shapes.

mod fp8;
mod graph;
mod paths;

use std::sync::{Mutex, MutexGuard};

use moe_backends::{CudaBackend, ReferenceBackend};
use moe_core::{Activation, DType, ExpertPartition, MoeBackend, MoeRunContext, QuantAlgo, Tensor};
use moe_kernels::cuda::download;

use crate::common::{activations, checkpoint, config, loaded, rel_l2, routing, run, run_payload};
use crate::quantized::{case, check_accuracy, tolerance as quant_tolerance};

const ACTIVATIONS: [Activation; 3] = [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2];

/// Serialises the GPU tests of this binary: a device has one stream, and a graph capture
/// records whatever any thread queues on it meanwhile, so no test may use the device while
/// another captures.
pub(crate) fn gpu_lock() -> MutexGuard<'static, ()> {
    static GPU: Mutex<()> = Mutex::new(());
    GPU.lock().unwrap_or_else(|p| p.into_inner())
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F32 { 1e-5 } else { 1e-2 }
}

#[test]
fn every_dtype_activation_and_path_matches_the_reference() {
    let _gpu = gpu_lock();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (a, activation) in ACTIVATIONS.into_iter().enumerate() {
            for k in [1, 2, 8] {
                let bias = (a + k) % 2 == 0;
                let mut c = config(16, 256, 192, k, dtype);
                c.activation = activation;
                c.bias = bias;
                let src = checkpoint(&c, 7 + k as u64 + 10 * a as u64);
                let cuda: CudaBackend = loaded(&c, &src);
                let reference: ReferenceBackend = loaded(&c, &src);
                // Rows per slot from 0.06 (decode) to 600: every path and tile size.
                for n in [1, 5, 37, 301, 1200] {
                    let x = activations(n, c.hidden_size, dtype, 3 + n as u64);
                    let (ids, w) = routing(n, k, c.num_experts, 11 * n as u64 + k as u64);
                    for weights in [Some(w.as_slice()), None] {
                        let want = run(&reference, &x, &ids, weights, dtype);
                        let got = run(&cuda, &x, &ids, weights, dtype);
                        let err = rel_l2(&got, &want);
                        assert!(
                            err <= tolerance(dtype),
                            "{dtype} {activation:?} bias={bias} k={k} n={n} weights={}: rel L2 {err:e}",
                            weights.is_some()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f32_output_of_a_bf16_layer_and_zero_tokens() {
    let _gpu = gpu_lock();
    let c = config(8, 64, 32, 2, DType::BF16);
    let src = checkpoint(&c, 5);
    let cuda: CudaBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(50, 64, DType::BF16, 1);
    let (ids, w) = routing(50, 2, 8, 2);
    let err = rel_l2(
        &run(&cuda, &x, &ids, Some(&w), DType::F32),
        &run(&reference, &x, &ids, Some(&w), DType::F32),
    );
    assert!(err <= 1e-2, "f32 output: {err:e}");
    let empty = Tensor::zeros(DType::BF16, vec![0, 64]);
    let no_ids = Tensor::from_i32(vec![0, 2], vec![]).unwrap();
    let ctx = MoeRunContext {
        x: &empty,
        x_sf: None,
        token_selected_slots: &no_ids,
        token_final_scales: None,
        output_dtype: DType::BF16,
        all_rank_num_tokens: None,
        comm_plan: None,
    };
    assert_eq!(cuda.run_moe(&ctx).unwrap().shape(), &[0, 64]);
}

#[test]
fn device_resident_inputs_give_a_device_output_equal_to_the_host_path() {
    let _gpu = gpu_lock();
    let c = config(16, 128, 64, 4, DType::BF16);
    let src = checkpoint(&c, 9);
    let cuda: CudaBackend = loaded(&c, &src);
    let dev = cuda.device().clone();
    for n in [3, 400] {
        let x = activations(n, 128, DType::BF16, n as u64);
        let (ids, w) = routing(n, 4, 16, 4);
        let ids_t = Tensor::from_i32(vec![n, 4], ids.clone()).unwrap();
        let w_t = Tensor::from_f32(vec![n, 4], w.clone()).unwrap();
        let (dx, dids, dw) = (
            dev.upload(&x).unwrap(),
            dev.upload(&ids_t).unwrap(),
            dev.upload(&w_t).unwrap(),
        );
        let ctx = MoeRunContext {
            x: &dx,
            x_sf: None,
            token_selected_slots: &dids,
            token_final_scales: Some(&dw),
            output_dtype: DType::BF16,
            all_rank_num_tokens: None,
            comm_plan: None,
        };
        let y = cuda.run_moe(&ctx).unwrap();
        assert!(!y.is_host(), "a device forward returns a device tensor");
        let host = run(&cuda, &x, &ids, Some(&w), DType::BF16);
        let dev_out: Vec<f64> = download(&y)
            .unwrap()
            .to_f32_vec("y")
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(dev_out, host, "n={n}: the device and host paths run the same kernels");
    }
}

#[test]
fn an_ep_rank_computes_only_its_slots() {
    let _gpu = gpu_lock();
    let mut c = config(12, 64, 64, 3, DType::F32);
    c.parallel.ep_size = 3;
    c.parallel.ep_rank = 1;
    let src = checkpoint(&c, 21);
    let load = |b: &mut dyn MoeBackend| {
        b.create_weights().unwrap();
        b.load_weights(&src, false).unwrap();
        b.post_load_weights().unwrap();
    };
    let p = ExpertPartition::compute(&c, true).unwrap();
    let mut cuda = CudaBackend::create(&c, p.clone()).unwrap();
    let mut reference = ReferenceBackend::create(&c, p).unwrap();
    load(&mut cuda);
    load(&mut reference);
    let x = activations(90, 64, DType::F32, 8);
    let (ids, w) = routing(90, 3, 12, 8);
    let err = rel_l2(
        &run(&cuda, &x, &ids, Some(&w), DType::F32),
        &run(&reference, &x, &ids, Some(&w), DType::F32),
    );
    assert!(err <= 1e-5, "EP rank 1 of 3: {err:e}");
}

#[test]
fn packed_quantized_formats_match_the_dequantized_oracle_and_the_reference() {
    let _gpu = gpu_lock();
    for (algo, act, bias) in [
        (QuantAlgo::Fp8PerTensor, Activation::Swiglu, true),
        (QuantAlgo::Fp8Block, Activation::Swiglu, false),
        (QuantAlgo::W4A16Mxfp4, Activation::GPT_OSS, true),
    ] {
        let k = case(algo, act, bias, 17 + algo as u64);
        let cuda: CudaBackend = loaded(&k.c, &k.src);
        let reference: ReferenceBackend = loaded(&k.c, &k.src);
        let n = k.x.rows();
        let kk = k.ids.len() / n;
        // All rows (tensor-core path) and the first 2 (GEMV path).
        for rows in [n, 2] {
            let x = k.x.narrow_rows(0, rows).unwrap();
            let (ids, w) = (&k.ids[..rows * kk], &k.w[..rows * kk]);
            let q_cuda = cuda.quantize_input(&x).unwrap();
            let q_ref = reference.quantize_input(&x).unwrap();
            let got = run_payload(&cuda, &q_cuda.x, q_cuda.x_sf.as_ref(), ids, Some(w), DType::F32);
            let want_ref = run_payload(&reference, &q_ref.x, q_ref.x_sf.as_ref(), ids, Some(w), DType::F32);
            if rows == n {
                let acc = check_accuracy(&got, &k.want, quant_tolerance(algo, &k.want))
                    .unwrap_or_else(|e| panic!("{algo:?}: cuda vs dequantized oracle: {e}"));
                println!("{algo:?}: vs oracle rel L2 {:.2e}", acc.rel_l2);
                assert!(rel_l2(&got, &k.float) > 0.0, "{algo:?}: no quantization happened");
            }
            // Formats that quantize activations feed the tensor cores the quantize-dequantized
            // activation rounded to bf16 (an E4M3 value times an f32 group scale has more
            // bits than bf16): a few activations then land across an E4M3 rounding midpoint
            // at FC2's input, each moving its token's row by a grid step (the host backends
            // differ from the reference by up to 1e-2 for the same reason).
            let bound = if algo == QuantAlgo::W4A16Mxfp4 { 1e-2 } else { 2e-2 };
            let between = rel_l2(&got, &want_ref);
            println!("{algo:?} rows={rows}: cuda vs reference rel L2 {between:.2e}");
            assert!(
                between <= bound,
                "{algo:?} rows={rows}: cuda vs reference rel L2 {between:e}"
            );
        }
    }
}
