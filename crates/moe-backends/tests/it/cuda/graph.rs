//! CUDA-graph capture of a whole layer forward on the `cuda` backend (issue #6: no host
//! synchronisation inside the forward; the decode path is capturable). Each case runs what the
//! scheduler's chunk body runs for one rank without a load balancer or a communication
//! strategy (`ops::route` on the device logits, `quantize_input`, `run_moe` on device
//! tensors), eagerly as the oracle and captured into a graph; a replay must equal the eager
//! forward bit for bit (same kernels on the same inputs), also after new inputs are written
//! into the captured input buffers.

use moe_backends::CudaBackend;
use moe_core::{DType, MoeBackend, MoeError, MoeRunContext, Result, RoutingMethod, Tensor};
use moe_kernels::cuda::{CudaDevice, download};
use moe_kernels::ops;

use super::gpu_lock;
use crate::common::{activations, checkpoint, config, loaded};

const E: usize = 16;
const H: usize = 128;
const I: usize = 64;
const K: usize = 4;

/// The chunk body of one rank: route on the device, quantize the input, run the experts.
fn forward(b: &CudaBackend, method: &RoutingMethod, x: &Tensor, logits: &Tensor) -> Result<Tensor> {
    let routed = ops::route(method, logits)?;
    let q = b.quantize_input(x)?;
    b.run_moe(&MoeRunContext {
        x: &q.x,
        x_sf: q.x_sf.as_ref(),
        token_selected_slots: &routed.ids,
        token_final_scales: routed.weights.as_ref(),
        output_dtype: DType::BF16,
        all_rank_num_tokens: None,
        comm_plan: None,
    })
}

/// The bits of a device or host tensor's values.
fn bits(t: &Tensor) -> Vec<u32> {
    download(t)
        .unwrap()
        .to_f32_vec("output")
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn logits(t: usize, seed: u64) -> Tensor {
    activations(t, E, DType::F32, seed)
}

fn methods() -> Vec<RoutingMethod> {
    let bias: Vec<f32> = (0..E).map(|j| ((j * 7) % 5) as f32 * 0.1 - 0.2).collect();
    vec![
        // The default softmax-then-top-k.
        RoutingMethod::Default { top_k: K },
        RoutingMethod::Renormalize { top_k: K },
        // DeepSeek-V3 style: grouped, with a correction bias (uploaded once per device).
        RoutingMethod::DeepSeekV3 {
            top_k: K,
            n_group: 4,
            topk_group: 2,
            routed_scaling_factor: 2.5,
            e_score_correction_bias: Some(bias),
            renormalize: true,
        },
    ]
}

/// The layer every case runs (bf16, no shared expert, SwiGLU).
fn layer() -> CudaBackend {
    let c = config(E, H, I, K, DType::BF16);
    loaded(&c, &checkpoint(&c, 41))
}

#[test]
fn captured_forward_replays_bit_identical_to_eager_and_takes_new_inputs() {
    let _gpu = gpu_lock();
    let cuda = layer();
    let dev: CudaDevice = cuda.device().clone();
    for method in methods() {
        for t in [1, 8, 64] {
            let label = format!("{} T={t}", method.name());
            // Fixed input buffers, held by this test alone so they can be refilled in place.
            let mut x = dev.upload(&activations(t, H, DType::BF16, 100 + t as u64)).unwrap();
            let mut l = dev.upload(&logits(t, 200 + t as u64)).unwrap();
            // Eager first: the oracle, and the warm-up that compiles the kernels and uploads
            // the routing bias (a graph cannot capture either).
            let eager = bits(&forward(&cuda, &method, &x, &l).unwrap());
            dev.synchronize().unwrap();

            let mut out = dev.zeros(DType::BF16, vec![t, H]).unwrap();
            let (graph, ()) = dev
                .capture(&label, || {
                    let y = forward(&cuda, &method, &x, &l)?;
                    dev.copy_into(&mut out, &y)
                })
                .unwrap_or_else(|e| panic!("{label}: capture: {e}"));
            assert_eq!(bits(&out), vec![0; t * H], "{label}: capture ran the forward");
            for replay in 0..2 {
                graph.launch().unwrap();
                dev.synchronize().unwrap();
                assert_eq!(bits(&out), eager, "{label}: replay {replay} differs from eager");
            }

            // New inputs in the captured buffers: a replay equals a new eager forward.
            dev.upload_into(&mut x, &activations(t, H, DType::BF16, 300 + t as u64))
                .unwrap();
            dev.upload_into(&mut l, &logits(t, 400 + t as u64)).unwrap();
            graph.launch().unwrap();
            dev.synchronize().unwrap();
            let replayed = bits(&out);
            let eager2 = bits(&forward(&cuda, &method, &x, &l).unwrap());
            dev.synchronize().unwrap();
            assert_eq!(replayed, eager2, "{label}: replay on new inputs differs from eager");
            assert_ne!(replayed, eager, "{label}: the new inputs changed nothing");

            // A NaN logit fed to the graph is refused at the next synchronisation, as for an
            // eager forward, once.
            if t == 8 {
                let mut v = logits(t, 500).to_f32_vec("l").unwrap();
                v[3 * E + 5] = f32::NAN;
                dev.upload_into(&mut l, &Tensor::from_f32(vec![t, E], v).unwrap())
                    .unwrap();
                graph.launch().unwrap();
                match dev.synchronize() {
                    Err(MoeError::NonFinite { what, location }) => {
                        assert_eq!(
                            (what.as_str(), location.as_str()),
                            ("router_logits", "token 3, expert 5"),
                            "{label}"
                        );
                    }
                    other => panic!("{label}: expected NonFinite after a replay, got {other:?}"),
                }
                dev.synchronize().unwrap();
            }
        }
    }
}

#[test]
fn capturing_a_host_synchronisation_is_a_typed_error_and_the_device_stays_usable() {
    let _gpu = gpu_lock();
    let cuda = layer();
    let dev = cuda.device().clone();
    let method = RoutingMethod::Default { top_k: K };
    let x = dev.upload(&activations(8, H, DType::BF16, 7)).unwrap();
    let l = dev.upload(&logits(8, 8)).unwrap();
    let eager = bits(&forward(&cuda, &method, &x, &l).unwrap());
    dev.synchronize().unwrap();

    // A download waits for the device: not capturable.
    let r = dev.capture("forward then download", || {
        let y = forward(&cuda, &method, &x, &l)?;
        download(&y).map(|_| ())
    });
    match r {
        Err(MoeError::GraphCapture { what, detail }) => {
            assert_eq!(what, "forward then download", "{detail}");
        }
        other => panic!("expected GraphCapture, got {other:?}"),
    }
    // So is a synchronisation.
    let r = dev.capture("forward then synchronize", || {
        let y = forward(&cuda, &method, &x, &l)?;
        dev.synchronize()?;
        drop(y);
        Ok(())
    });
    assert!(
        matches!(&r, Err(MoeError::GraphCapture { what, .. }) if what == "forward then synchronize"),
        "expected GraphCapture, got {r:?}"
    );

    // The device is usable afterwards: eager forwards give the same output, and a capture works.
    dev.synchronize().unwrap();
    assert_eq!(bits(&forward(&cuda, &method, &x, &l).unwrap()), eager);
    let mut out = dev.zeros(DType::BF16, vec![8, H]).unwrap();
    let (graph, ()) = dev
        .capture("forward after a failed capture", || {
            let y = forward(&cuda, &method, &x, &l)?;
            dev.copy_into(&mut out, &y)
        })
        .unwrap();
    graph.launch().unwrap();
    dev.synchronize().unwrap();
    assert_eq!(bits(&out), eager);
}
