//! Deterministic layer data for a cell: expert weights under their canonical names in a
//! `MemoryWeights`, activations and router logits, plus f32 copies of exactly the values the
//! layer sees (after rounding to the cell's dtype) for the naive oracle.
//!
//! Activations and logits are `N(0, 1)` as in TensorRT-LLM's tests. Weights are
//! `N(0, 1/fan_in)` rather than `N(0, 1)`: with unit weights the FC2 output of a squared-ReLU
//! expert grows like `H * sqrt(I)` and leaves the f16 range, which would test overflow
//! instead of the layer.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, MemoryWeights, QuantAlgo, Result, Tensor};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_quant::quantize::{ExpertMatrices, amax, dequantize, quantize_expert, reference_act_quants};

use crate::matrix::Cell;
use crate::oracle::{activate, matvec};
use crate::rng::{SplitMix64, seed_of};

/// One expert's tensors as f32 (already rounded to the layer dtype). `w3` and `b3` are
/// absent for non-gated activations; biases are absent without `bias`.
#[derive(Clone, Debug)]
pub struct ExpertData {
    /// Gate `[I, H]`.
    pub w1: Vec<f32>,
    /// Up `[I, H]`.
    pub w3: Option<Vec<f32>>,
    /// Down `[H, I]`.
    pub w2: Vec<f32>,
    pub b1: Option<Vec<f32>>,
    pub b3: Option<Vec<f32>>,
    pub b2: Option<Vec<f32>>,
}

/// Everything a cell feeds the layer.
#[derive(Clone, Debug)]
pub struct LayerData {
    pub num_tokens: usize,
    /// `[T, H]` in the cell dtype.
    pub x: Tensor,
    /// `[T, E]` f32 (routing runs in f32).
    pub logits: Tensor,
    pub weights: MemoryWeights,
    /// `x` widened back to f32.
    pub x_f32: Vec<f32>,
    pub logits_f32: Vec<f32>,
    pub experts: Vec<ExpertData>,
    /// How the format quantizes the FC1 and FC2 inputs (none for 16/32-bit activations).
    pub act_quant: [ActQuant; 2],
}

/// Rounds `v` to `dtype` and returns both the tensor and its values as f32.
fn rounded(dtype: DType, shape: Vec<usize>, v: &[f32]) -> Result<(Tensor, Vec<f32>)> {
    let t = Tensor::from_f32_as(dtype, shape, v)?;
    let back = t.to_f32_vec("rounded")?;
    Ok((t, back))
}

/// Builds the data of `cell`. The values depend on the shape, flavour and token count only
/// (not on dtype, routing, backend or chunking), so every cell of a data key sees the same
/// numbers, and different dtypes see the same numbers rounded.
///
/// Quantized cells get the checkpoint tensors of their format from `moe_quant::quantize`
/// (the canonical exporters' scale choices), and the oracle sees the weights those tensors
/// decode to (`moe_quant::quantize::dequantize`, written on the codecs, independent of the
/// kernels' decoders).
pub fn layer_data(cell: &Cell) -> Result<LayerData> {
    if cell.quant == QuantAlgo::None {
        return float_layer_data(cell, cell.dtype);
    }
    let data = float_layer_data(cell, DType::F32)?;
    quantized(cell, data)
}

/// The layer with weights stored in `weight_dtype` (activations in the cell dtype).
fn float_layer_data(cell: &Cell, weight_dtype: DType) -> Result<LayerData> {
    let s = cell.shape;
    let (e, h, i, t) = (s.num_experts, s.hidden, s.intermediate, cell.num_tokens);
    let gated = cell.flavor.activation.is_gated();
    let dtype = cell.dtype;
    let mut rng = SplitMix64::new(seed_of(&format!("data-{}-{}-t{t}", s.id(), cell.flavor.id())));

    let mut weights = MemoryWeights::new();
    let mut experts = Vec::with_capacity(e);
    let std_in = 1.0 / (h as f64).sqrt();
    let std_down = 1.0 / (i as f64).sqrt();
    for expert in 0..e {
        let mut put =
            |proj: Proj, suffix: &str, shape: Vec<usize>, std: f64, rng: &mut SplitMix64| -> Result<Vec<f32>> {
                let n = shape.iter().product();
                let (tensor, values) = rounded(weight_dtype, shape, &rng.normal_vec(n, std))?;
                weights.insert(expert_tensor_name(expert, proj, suffix), tensor);
                Ok(values)
            };
        let w1 = put(Proj::W1, "weight", vec![i, h], std_in, &mut rng)?;
        let w3 = if gated {
            Some(put(Proj::W3, "weight", vec![i, h], std_in, &mut rng)?)
        } else {
            None
        };
        let w2 = put(Proj::W2, "weight", vec![h, i], std_down, &mut rng)?;
        let (b1, b3, b2) = if cell.flavor.bias {
            let b1 = put(Proj::W1, "bias", vec![i], 0.1, &mut rng)?;
            let b3 = if gated {
                Some(put(Proj::W3, "bias", vec![i], 0.1, &mut rng)?)
            } else {
                None
            };
            let b2 = put(Proj::W2, "bias", vec![h], 0.1, &mut rng)?;
            (Some(b1), b3, Some(b2))
        } else {
            (None, None, None)
        };
        experts.push(ExpertData { w1, w3, w2, b1, b3, b2 });
    }
    let (x, x_f32) = rounded(dtype, vec![t, h], &rng.normal_vec(t * h, 1.0))?;
    let logits_f32 = rng.normal_vec(t * e, 1.0);
    let logits = Tensor::from_f32(vec![t, e], logits_f32.clone())?;
    Ok(LayerData {
        num_tokens: t,
        x,
        logits,
        weights,
        x_f32,
        logits_f32,
        experts,
        act_quant: [ActQuant::None; 2],
    })
}

/// Replaces the f32 weights of `data` by the checkpoint tensors of the cell's format, and the
/// oracle's matrices by what those tensors decode to.
fn quantized(cell: &Cell, mut data: LayerData) -> Result<LayerData> {
    let q = cell.config().quant;
    let (h, i) = (cell.shape.hidden, cell.shape.intermediate);
    // Static activation scales (FP8 per tensor, NVFP4) come from calibration amaxima: the
    // input's, and a bound on the FC2 input over every (token, expert) pair, so no
    // activation saturates whichever experts the routing picks.
    let input_amax = [amax(&data.x_f32), activation_amax(cell, &data)];
    let mut weights = MemoryWeights::new();
    for (e, ex) in data.experts.iter().enumerate() {
        let m = ExpertMatrices {
            w1: &ex.w1,
            w3: ex.w3.as_deref(),
            w2: &ex.w2,
            hidden: h,
            intermediate: i,
        };
        for (name, t) in quantize_expert(&q, e, &m, input_amax)? {
            weights.insert(name, t);
        }
        for proj in [Proj::W1, Proj::W3, Proj::W2] {
            let name = expert_tensor_name(e, proj, "bias");
            if let Some(b) = data.weights.tensor(&name) {
                weights.insert(name, b.clone());
            }
        }
    }
    for (e, ex) in data.experts.iter_mut().enumerate() {
        ex.w1 = dequantize(&q, &weights, e, Proj::W1, i, h)?;
        if ex.w3.is_some() {
            ex.w3 = Some(dequantize(&q, &weights, e, Proj::W3, i, h)?);
        }
        ex.w2 = dequantize(&q, &weights, e, Proj::W2, h, i)?;
    }
    // The format's activation quantization as its descriptor defines it, folded from the
    // checkpoint (static scales are the maxima of the experts' `input_scale`s, so every EP rank
    // quantizes alike).
    data.act_quant = reference_act_quants(&q, &weights, data.experts.len(), cell.flavor.activation.is_gated())?;
    data.weights = weights;
    Ok(data)
}

/// Largest `|activation(FC1 x)|` over every token and every expert.
fn activation_amax(cell: &Cell, data: &LayerData) -> f32 {
    let (h, i) = (cell.shape.hidden, cell.shape.intermediate);
    let mut m = 0.0f32;
    for tok in 0..data.num_tokens {
        let x: Vec<f64> = data.x_f32[tok * h..(tok + 1) * h]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        for ex in &data.experts {
            let gate = matvec(&ex.w1, i, h, &x, ex.b1.as_deref());
            let up = ex.w3.as_ref().map(|w3| matvec(w3, i, h, &x, ex.b3.as_deref()));
            if let Ok(act) = activate(cell.flavor.activation, &gate, up.as_deref()) {
                m = act.iter().fold(m, |m, a| m.max(a.abs() as f32));
            }
        }
    }
    m
}
