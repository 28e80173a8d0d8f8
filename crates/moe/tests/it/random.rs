//! Deterministic random layers for the assembler tests.

use std::sync::Arc;
use std::time::Duration;

use moe::{ConfigurableMoe, CreateOptions, LayerParts, create_moe_with};
use moe_core::prng::SplitMix64;
use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, MemoryWeights, MoeConfig, ProcessGroup, QuantConfig, Result, Tensor, WeightSource};
use moe_quant::quantize::{ExpertMatrices, quantize_expert};

/// The workspace's seeded generator (`moe_core::prng`) with the tensor helper these tests use.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.next_sym()
    }

    pub fn tensor(&mut self, dtype: DType, shape: Vec<usize>, scale: f32) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::from_f32_as(dtype, shape, &v).unwrap()
    }
}

/// Canonical expert weights for `e` experts of size `h` x `i`.
pub fn expert_weights(rng: &mut Rng, e: usize, h: usize, i: usize, dtype: DType) -> MemoryWeights {
    let mut w = MemoryWeights::new();
    for x in 0..e {
        w.insert(
            expert_tensor_name(x, Proj::W1, "weight"),
            rng.tensor(dtype, vec![i, h], 0.5),
        );
        w.insert(
            expert_tensor_name(x, Proj::W3, "weight"),
            rng.tensor(dtype, vec![i, h], 0.5),
        );
        w.insert(
            expert_tensor_name(x, Proj::W2, "weight"),
            rng.tensor(dtype, vec![h, i], 0.5),
        );
    }
    w
}

/// The canonical checkpoint of `e` gated experts of size `h` x `i` quantized as `q`: weights
/// uniform in [-scale, scale), static input scales from the calibration amaxes `input_amax`
/// (FC1's input, FC2's input).
pub fn quantized_weights(
    rng: &mut Rng,
    q: &QuantConfig,
    (e, h, i): (usize, usize, usize),
    scale: f32,
    input_amax: [f32; 2],
) -> MemoryWeights {
    let mut w = MemoryWeights::new();
    for x in 0..e {
        let mut m = |n: usize| (0..n).map(|_| rng.uniform() * scale).collect::<Vec<f32>>();
        let (w1, w3, w2) = (m(i * h), m(i * h), m(h * i));
        let mats = ExpertMatrices {
            w1: &w1,
            w3: Some(&w3),
            w2: &w2,
            hidden: h,
            intermediate: i,
        };
        for (name, t) in quantize_expert(q, x, &mats, input_amax).unwrap() {
            w.insert(name, t);
        }
    }
    w
}

/// One rank's layer of a multi-rank test: `config` (with its parallel ranks set) over `group`
/// with strategy `comm` (a 20 s deadline), weights loaded from `weights`.
pub fn rank_layer(
    config: MoeConfig,
    group: Arc<dyn ProcessGroup>,
    comm: &str,
    weights: &dyn WeightSource,
) -> Result<ConfigurableMoe> {
    let parts = LayerParts {
        group: Some(group),
        comm_choice: comm.into(),
        comm_timeout: Duration::from_secs(20),
        ..LayerParts::default()
    };
    let mut layer = create_moe_with(
        config,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )?;
    layer.load_weights(weights)?;
    Ok(layer)
}
