//! Quantized experts through both host backends. For every format: a random bf16 layer is
//! quantized expert by expert into the canonical checkpoint tensors (`moe_quant::quantize`),
//! loaded through each backend and run as the scheduler runs it (`quantize_input`, then
//! `run_moe`); the outputs are compared with
//! (a) a dense f64 oracle over the dequantized weights (`moe_quant::quantize::dequantize`,
//!     straight from the codecs) with the format's activation quantization applied, judged by
//!     TensorRT-LLM's §7.5 criterion of the format (`check_accuracy`),
//! (b) each other (CPU against reference, relative L2),
//! and the quantization error against the unquantized bf16 layer is bounded loosely (it is
//! the format's, not the backends'). TP shards of FP8 block and NVFP4 sum to the whole layer;
//! malformed checkpoints are typed errors naming the tensor.

use moe_backends::{CpuBackend, ReferenceBackend};
use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{
    Activation, DType, MemoryWeights, MoeBackend, MoeConfig, MoeError, MoeRunContext, QuantAlgo, QuantConfig, Tensor,
};
use moe_kernels::cpu::act_quant::{ActQuant, qdq_rows};
use moe_quant::quantize::{ExpertMatrices, amax, dequantize, quantize_expert, reference_act_quants};

use crate::common::{Rng, config, loaded, rel_l2, routing};

/// The layer and batch a case builds: `experts` experts of `hidden -> inter -> hidden`,
/// `top_k` experts per token, `tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) experts: usize,
    pub(crate) hidden: usize,
    pub(crate) inter: usize,
    pub(crate) top_k: usize,
    pub(crate) tokens: usize,
}

/// The shape of the host round trips (and of `case`).
pub(crate) const SMALL: Shape = Shape {
    experts: 6,
    hidden: 256,
    inter: 256,
    top_k: 2,
    tokens: 40,
};

/// TensorRT-LLM's `check_accuracy` criterion (core spec §7.5): an element mismatches when
/// `|out - ref| > atol + rtol * |ref|`; the run passes iff the mismatch fraction is below
/// `1 - percent` (`percent = 1`: no mismatch at all, `assert_close`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tolerance {
    rtol: f64,
    atol: f64,
    percent: f64,
}

/// The §7.5 row of each format, from its descriptor (`moe_core::quant_format`); where the
/// table derives the absolute tolerance from the reference (W8A16's WoQ rule
/// `1.5 * max|ref| / 128`), it is computed per run.
pub(crate) fn tolerance(algo: QuantAlgo, reference: &[f64]) -> Tolerance {
    let t = algo.descriptor().tolerance;
    Tolerance {
        rtol: t.rtol,
        atol: t
            .atol_of_max
            .map_or(t.atol, |f| f * reference.iter().fold(0.0f64, |m, v| m.max(v.abs()))),
        percent: t.percent,
    }
}

/// What `check_accuracy` measured.
#[derive(Debug)]
pub(crate) struct Accuracy {
    pub(crate) mismatch_fraction: f64,
    pub(crate) max_abs_diff: f64,
    pub(crate) rel_l2: f64,
}

pub(crate) fn check_accuracy(out: &[f64], reference: &[f64], tol: Tolerance) -> Result<Accuracy, String> {
    assert_eq!(out.len(), reference.len());
    let mut mismatches = 0usize;
    let mut max_abs_diff = 0.0f64;
    for (&o, &r) in out.iter().zip(reference) {
        let d = (o - r).abs();
        if !o.is_finite() || d > tol.atol + tol.rtol * r.abs() {
            mismatches += 1;
        }
        max_abs_diff = max_abs_diff.max(d);
    }
    let mismatch_fraction = mismatches as f64 / out.len().max(1) as f64;
    let acc = Accuracy {
        mismatch_fraction,
        max_abs_diff,
        rel_l2: rel_l2(out, reference),
    };
    let pass = if tol.percent >= 1.0 {
        mismatches == 0
    } else {
        mismatch_fraction < 1.0 - tol.percent
    };
    if pass {
        Ok(acc)
    } else {
        Err(format!("{acc:?} outside {tol:?}"))
    }
}

/// The bf16 "model" layer: master weights (bf16 values in f32) and biases.
struct FloatLayer {
    shape: Shape,
    gated: bool,
    w1: Vec<Vec<f32>>,
    w3: Vec<Vec<f32>>,
    w2: Vec<Vec<f32>>,
    /// `(b1, b3, b2)` per expert.
    bias: Option<Vec<[Vec<f32>; 3]>>,
}

fn bf16(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect()
}

fn float_layer(seed: u64, gated: bool, bias: bool, shape: Shape) -> FloatLayer {
    let Shape {
        experts,
        hidden: h,
        inter: i,
        ..
    } = shape;
    let mut rng = Rng::new(seed);
    let (sh, si) = (2.0 / (h as f32).sqrt(), 2.0 / (i as f32).sqrt());
    let mut l = FloatLayer {
        shape,
        gated,
        w1: vec![],
        w3: vec![],
        w2: vec![],
        bias: bias.then(Vec::new),
    };
    for _ in 0..experts {
        l.w1.push(bf16(rng.fill(i * h, sh)));
        l.w3.push(if gated { bf16(rng.fill(i * h, sh)) } else { vec![] });
        l.w2.push(bf16(rng.fill(h * i, si)));
        if let Some(b) = &mut l.bias {
            b.push([bf16(rng.fill(i, 0.2)), bf16(rng.fill(i, 0.2)), bf16(rng.fill(h, 0.2))]);
        }
    }
    l
}

/// Per-expert dense weights of a layer (fc1 rows `[w3 ; w1]` or `[w1]`), as the oracle reads them.
struct Dense {
    shape: Shape,
    fc1: Vec<Vec<f32>>,
    fc2: Vec<Vec<f32>>,
    fc1_bias: Option<Vec<Vec<f32>>>,
    fc2_bias: Option<Vec<Vec<f32>>>,
}

impl FloatLayer {
    fn dense(&self) -> Dense {
        Dense {
            shape: self.shape,
            fc1: (0..self.shape.experts)
                .map(|e| {
                    if self.gated {
                        [self.w3[e].clone(), self.w1[e].clone()].concat()
                    } else {
                        self.w1[e].clone()
                    }
                })
                .collect(),
            fc2: self.w2.clone(),
            fc1_bias: self.bias.as_ref().map(|b| {
                b.iter()
                    .map(|[b1, b3, _]| {
                        if self.gated {
                            [b3.clone(), b1.clone()].concat()
                        } else {
                            b1.clone()
                        }
                    })
                    .collect()
            }),
            fc2_bias: self
                .bias
                .as_ref()
                .map(|b| b.iter().map(|[_, _, b2]| b2.clone()).collect()),
        }
    }
}

/// `silu(gate) * up`-style activation channel `c` in f64 (written out again, independently).
fn activate(act: Activation, fc1: &[f64], inter: usize, c: usize) -> f64 {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match act {
        Activation::Swiglu => fc1[inter + c] * sig(fc1[inter + c]) * fc1[c],
        Activation::SwigluGptOss { alpha, beta, limit } => {
            let (a, b, l) = (f64::from(alpha), f64::from(beta), f64::from(limit));
            let gate = fc1[inter + c].min(l);
            (fc1[c].clamp(-l, l) + b) * gate * sig(a * gate)
        }
        Activation::Relu2 => fc1[c].max(0.0).powi(2),
    }
}

/// The dense f64 MoE: `Σ_k w_k · FC2(qdq2(act(FC1(qdq1(x)))))`; also returns the largest
/// |activation| seen (the calibration amax of FC2's input).
fn oracle(
    d: &Dense,
    act: Activation,
    x: &[f32],
    ids: &[i32],
    w: &[f32],
    q1: ActQuant,
    q2: ActQuant,
) -> (Vec<f64>, f32) {
    let Shape {
        hidden: h,
        inter: i,
        top_k: k,
        tokens: n,
        ..
    } = d.shape;
    let fc1_rows = d.fc1[0].len() / h;
    let mut out = vec![0.0f64; n * h];
    let mut act_amax = 0.0f32;
    for t in 0..n {
        let mut xq = x[t * h..(t + 1) * h].to_vec();
        qdq_rows(&q1, &mut xq, h).unwrap();
        for j in 0..k {
            let e = ids[t * k + j] as usize;
            let fc1: Vec<f64> = (0..fc1_rows)
                .map(|r| {
                    let dot: f64 = (0..h).map(|c| f64::from(d.fc1[e][r * h + c]) * f64::from(xq[c])).sum();
                    dot + d.fc1_bias.as_ref().map_or(0.0, |b| f64::from(b[e][r]))
                })
                .collect();
            let mut a: Vec<f32> = (0..i).map(|c| activate(act, &fc1, i, c) as f32).collect();
            act_amax = act_amax.max(amax(&a));
            qdq_rows(&q2, &mut a, i).unwrap();
            for o in 0..h {
                let dot: f64 = (0..i).map(|c| f64::from(d.fc2[e][o * i + c]) * f64::from(a[c])).sum();
                let y = dot + d.fc2_bias.as_ref().map_or(0.0, |b| f64::from(b[e][o]));
                out[t * h + o] += f64::from(w[t * k + j]) * y;
            }
        }
    }
    (out, act_amax)
}

/// The canonical checkpoint of `layer` in format `q` (biases as bf16 `.bias` tensors).
fn quantized_checkpoint(q: &QuantConfig, layer: &FloatLayer, input_amax: [f32; 2]) -> MemoryWeights {
    let mut src = MemoryWeights::new();
    for e in 0..layer.shape.experts {
        let m = ExpertMatrices {
            w1: &layer.w1[e],
            w3: layer.gated.then_some(layer.w3[e].as_slice()),
            w2: &layer.w2[e],
            hidden: layer.shape.hidden,
            intermediate: layer.shape.inter,
        };
        for (name, t) in quantize_expert(q, e, &m, input_amax).unwrap() {
            src.insert(name, t);
        }
        if let Some(b) = &layer.bias {
            let [b1, b3, b2] = &b[e];
            let mut put = |p: Proj, v: &[f32]| {
                src.insert(
                    expert_tensor_name(e, p, "bias"),
                    Tensor::from_f32_as(DType::BF16, vec![v.len()], v).unwrap(),
                )
            };
            put(Proj::W1, b1);
            put(Proj::W2, b2);
            if layer.gated {
                put(Proj::W3, b3);
            }
        }
    }
    src
}

/// The dense weights the checkpoint decodes to (the "dequantized-weight reference").
fn dequantized(q: &QuantConfig, src: &MemoryWeights, layer: &FloatLayer) -> Dense {
    let deq = |e: usize, p: Proj, out: usize, inp: usize| dequantize(q, src, e, p, out, inp).unwrap();
    let (h, i) = (layer.shape.hidden, layer.shape.inter);
    let mut d = layer.dense();
    for e in 0..layer.shape.experts {
        d.fc1[e] = if layer.gated {
            [deq(e, Proj::W3, i, h), deq(e, Proj::W1, i, h)].concat()
        } else {
            deq(e, Proj::W1, i, h)
        };
        d.fc2[e] = deq(e, Proj::W2, h, i);
    }
    d
}

/// Runs `b` as the scheduler does: `quantize_input`, then `run_moe`; f32 output.
fn run_quantized(b: &dyn MoeBackend, x: &Tensor, ids: &[i32], w: &[f32]) -> Vec<f64> {
    let q = b.quantize_input(x).unwrap();
    // FP8 formats travel as E4M3 codes (and group scales); the others as the layer's values.
    if q.x.dtype() != DType::F8E4M3 {
        assert_eq!(q.x.dtype(), x.dtype());
    }
    let n = x.rows();
    let k = ids.len() / n.max(1);
    let ids = Tensor::from_i32(vec![n, k], ids.to_vec()).unwrap();
    let w = Tensor::from_f32(vec![n, k], w.to_vec()).unwrap();
    let ctx = MoeRunContext {
        x: &q.x,
        x_sf: q.x_sf.as_ref(),
        token_selected_slots: &ids,
        token_final_scales: Some(&w),
        output_dtype: DType::F32,
        all_rank_num_tokens: None,
        comm_plan: None,
    };
    b.run_moe(&ctx)
        .unwrap()
        .to_f32_vec("out")
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn quant_config(algo: QuantAlgo) -> QuantConfig {
    let mut q = QuantConfig {
        algo,
        ..QuantConfig::default()
    };
    match algo {
        QuantAlgo::Fp8Block => q.weight_block_size = Some([128, 128]),
        QuantAlgo::W4A16Int4 => q.group_size = Some(128),
        _ => {}
    }
    q
}

fn layer_config(q: &QuantConfig, act: Activation, bias: bool, shape: Shape) -> MoeConfig {
    let mut c = config(shape.experts, shape.hidden, shape.inter, shape.top_k, DType::BF16);
    c.quant = q.clone();
    c.activation = act;
    c.bias = bias;
    c
}

/// Everything one round trip needs.
pub(crate) struct Case {
    pub(crate) shape: Shape,
    pub(crate) c: MoeConfig,
    pub(crate) src: MemoryWeights,
    pub(crate) x: Tensor,
    pub(crate) ids: Vec<i32>,
    pub(crate) w: Vec<f32>,
    /// Dequantized-weight oracle with the format's activation quantization.
    pub(crate) want: Vec<f64>,
    /// The unquantized bf16 layer.
    pub(crate) float: Vec<f64>,
}

/// [`case_with`] on the [`SMALL`] shape.
pub(crate) fn case(algo: QuantAlgo, act: Activation, bias: bool, seed: u64) -> Case {
    case_with(algo, act, bias, seed, SMALL)
}

/// A random bf16 layer of `shape` quantized to `algo`, a batch of `shape.tokens` tokens and
/// its routing, and the f64 oracles over all of them.
pub(crate) fn case_with(algo: QuantAlgo, act: Activation, bias: bool, seed: u64, shape: Shape) -> Case {
    let Shape {
        experts: e,
        hidden: h,
        top_k: k,
        tokens: n,
        ..
    } = shape;
    let q = quant_config(algo);
    let layer = float_layer(seed, act.is_gated(), bias, shape);
    let xv = bf16(Rng::new(seed ^ 0x5EED).fill(n * h, 2.0));
    let x = Tensor::from_f32_as(DType::BF16, vec![n, h], &xv).unwrap();
    let (ids, w) = routing(n, k, e, seed);
    // Calibrate the static scales on the float layer: FC1's input is x, FC2's the activations.
    let (float, act_amax) = oracle(&layer.dense(), act, &xv, &ids, &w, ActQuant::None, ActQuant::None);
    let src = quantized_checkpoint(&q, &layer, [amax(&xv), act_amax]);
    // The format's activation quantization, folded from the checkpoint as spec A.3 says,
    // independently of the quant methods.
    let [q1, q2] = reference_act_quants(&q, &src, e, act.is_gated()).unwrap();
    let (want, _) = oracle(&dequantized(&q, &src, &layer), act, &xv, &ids, &w, q1, q2);
    Case {
        shape,
        c: layer_config(&q, act, bias, shape),
        src,
        x,
        ids,
        w,
        want,
        float,
    }
}

/// Runs one format through both backends and checks (a) and (b) and the quantization error.
/// `max_quant_err` bounds the relative L2 against the unquantized layer; `cpu_vs_ref` the
/// CPU backend against the reference.
fn round_trip(algo: QuantAlgo, act: Activation, bias: bool, max_quant_err: f64, cpu_vs_ref: f64) {
    let k = case(algo, act, bias, 17 + algo as u64);
    let cpu: CpuBackend = loaded(&k.c, &k.src);
    let reference: ReferenceBackend = loaded(&k.c, &k.src);
    assert_eq!(cpu.quant_method().algo(), algo);
    let got_cpu = run_quantized(&cpu, &k.x, &k.ids, &k.w);
    let got_ref = run_quantized(&reference, &k.x, &k.ids, &k.w);
    let tol = tolerance(algo, &k.want);
    let what = format!("{algo:?} {act:?} bias={bias}");
    let acc_cpu =
        check_accuracy(&got_cpu, &k.want, tol).unwrap_or_else(|e| panic!("{what}: cpu vs dequantized oracle: {e}"));
    let acc_ref = check_accuracy(&got_ref, &k.want, tol)
        .unwrap_or_else(|e| panic!("{what}: reference vs dequantized oracle: {e}"));
    let between = rel_l2(&got_cpu, &got_ref);
    let quant_err = rel_l2(&got_cpu, &k.float);
    // Shown with `--nocapture`: the measured errors of each format.
    println!(
        "{what}: vs oracle cpu rel L2 {:.2e} max|d| {:.2e} mismatch {:.3} | reference rel L2 {:.2e} \
         | cpu vs reference {:.2e} | vs bf16 layer {:.2e}",
        acc_cpu.rel_l2, acc_cpu.max_abs_diff, acc_cpu.mismatch_fraction, acc_ref.rel_l2, between, quant_err
    );
    assert!(between <= cpu_vs_ref, "{what}: cpu vs reference rel L2 {between:e}");
    assert!(
        quant_err <= max_quant_err,
        "{what}: quantization error vs the bf16 layer, rel L2 {quant_err:e}"
    );
    assert!(
        quant_err > 0.0 || algo == QuantAlgo::None,
        "{what}: no quantization happened"
    );
}

// Bounds: weight-only formats differ between backends only by f32 summation order (~1e-6).
// Formats that quantize activations can flip a rounding where the two accumulations of an
// activation (f32 here, f64 there) straddle a grid midpoint; a flip moves one activation by one
// grid step and so one token's whole output row (measured: one flipped FP8 activation out of
// 20480 gives 1e-3), hence 1e-2 for them.

/// The host backends' `quantize_input` of FP8 formats is the payload that crosses ranks: one
/// byte an element, plus one f32 scale per 128 columns for FP8 block (DeepSeek's 1 x 128
/// groups), instead of the two bytes of bf16; other formats keep the layer's dtype.
#[test]
fn fp8_payload_is_one_byte_an_element_plus_group_scales() {
    for (algo, scale_bytes) in [
        (QuantAlgo::Fp8Block, 4 * SMALL.hidden.div_ceil(128)),
        (QuantAlgo::Fp8PerTensor, 0),
    ] {
        let k = case(algo, Activation::Swiglu, false, 5);
        for b in [
            &loaded::<CpuBackend>(&k.c, &k.src) as &dyn MoeBackend,
            &loaded::<ReferenceBackend>(&k.c, &k.src),
        ] {
            let q = b.quantize_input(&k.x).unwrap();
            assert_eq!(q.x.dtype(), DType::F8E4M3, "{algo:?} {}", b.name());
            assert_eq!(q.x.shape(), k.x.shape());
            let sf_bytes = q.x_sf.as_ref().map_or(0, |sf| sf.numel() * sf.dtype().size_in_bytes());
            let per_token = (q.x.numel() * q.x.dtype().size_in_bytes() + sf_bytes) / SMALL.tokens;
            println!(
                "{algo:?} {}: {per_token} bytes per token (bf16: {})",
                b.name(),
                2 * SMALL.hidden
            );
            assert_eq!(per_token, SMALL.hidden + scale_bytes, "{algo:?} {}", b.name());
        }
    }
    // NVFP4 and weight-only formats still hand over values in the layer's dtype.
    let k = case(QuantAlgo::W4A16Mxfp4, Activation::GPT_OSS, true, 5);
    let b: CpuBackend = loaded(&k.c, &k.src);
    let q = b.quantize_input(&k.x).unwrap();
    assert_eq!((q.x.dtype(), q.x_sf.is_none()), (DType::BF16, true));
}

/// A payload that does not fit the layer is a typed error naming it, never a panic.
#[test]
fn malformed_fp8_payloads_are_typed_errors() {
    let k = case(QuantAlgo::Fp8Block, Activation::Swiglu, false, 6);
    let b: CpuBackend = loaded(&k.c, &k.src);
    let q = b.quantize_input(&k.x).unwrap();
    let sf = q.x_sf.clone().unwrap();
    let n = k.x.rows();
    let ids = Tensor::from_i32(vec![n, SMALL.top_k], k.ids.clone()).unwrap();
    let run = |x: &Tensor, x_sf: Option<&Tensor>| {
        b.run_moe(&MoeRunContext {
            x,
            x_sf,
            token_selected_slots: &ids,
            token_final_scales: None,
            output_dtype: DType::F32,
            all_rank_num_tokens: None,
            comm_plan: None,
        })
    };
    assert!(run(&q.x, Some(&sf)).is_ok());
    let missing = run(&q.x, None).unwrap_err().to_string();
    assert!(missing.contains("x"), "{missing}");
    let short = sf.narrow_rows(0, n - 1).unwrap();
    let wrong_rows = run(&q.x, Some(&short)).unwrap_err().to_string();
    assert!(wrong_rows.contains("x_sf"), "{wrong_rows}");
    let stray = run(&k.x, Some(&sf)).unwrap_err().to_string();
    assert!(stray.contains("x_sf"), "{stray}");
}

#[test]
fn fp8_per_tensor_round_trip() {
    round_trip(QuantAlgo::Fp8PerTensor, Activation::Swiglu, true, 0.1, 1e-2);
}

#[test]
fn fp8_block_round_trip() {
    round_trip(QuantAlgo::Fp8Block, Activation::Swiglu, false, 0.1, 1e-2);
}

#[test]
fn nvfp4_round_trip_gated_and_not() {
    round_trip(QuantAlgo::Nvfp4, Activation::Swiglu, false, 0.3, 1e-2);
    round_trip(QuantAlgo::Nvfp4, Activation::Relu2, true, 0.3, 1e-2);
}

#[test]
fn mxfp4_round_trip_gpt_oss_with_bias() {
    round_trip(QuantAlgo::W4A16Mxfp4, Activation::GPT_OSS, true, 0.3, 1e-5);
}

#[test]
fn int4_group_round_trip() {
    round_trip(QuantAlgo::W4A16Int4, Activation::Swiglu, false, 0.2, 1e-5);
}

#[test]
fn int8_channel_round_trip() {
    round_trip(QuantAlgo::W8A16, Activation::Swiglu, true, 0.02, 1e-5);
}

/// The sum of the TP ranks' outputs equals the unsharded layer: block scales went with their
/// blocks, and the activation quantization (static NVFP4 global scale; FP8 1x128 groups, one
/// per rank's 128 channels) sees the same blocks as unsharded.
#[test]
fn tp2_shards_sum_to_the_whole_layer_for_fp8_block_and_nvfp4() {
    for algo in [QuantAlgo::Fp8Block, QuantAlgo::Nvfp4] {
        let k = case(algo, Activation::Swiglu, true, 5);
        let whole: CpuBackend = loaded(&k.c, &k.src);
        let want = run_quantized(&whole, &k.x, &k.ids, &k.w);
        for reference in [false, true] {
            let mut sum = vec![0.0f64; k.shape.tokens * k.shape.hidden];
            for rank in 0..2 {
                let mut c = k.c.clone();
                c.parallel.tp_size = 2;
                c.parallel.tp_rank = rank;
                let part = if reference {
                    run_quantized(&loaded::<ReferenceBackend>(&c, &k.src), &k.x, &k.ids, &k.w)
                } else {
                    run_quantized(&loaded::<CpuBackend>(&c, &k.src), &k.x, &k.ids, &k.w)
                };
                sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
            }
            let err = rel_l2(&sum, &want);
            println!("{algo:?} tp2 (reference: {reference}): rel L2 of the shard sum vs tp1 {err:.2e}");
            assert!(err <= 1e-4, "{algo:?} reference={reference}: rel L2 {err:e}");
            check_accuracy(&sum, &k.want, tolerance(algo, &k.want)).unwrap_or_else(|e| panic!("{algo:?}: {e}"));
        }
    }
}

/// Loading a malformed checkpoint through a backend: a missing scale, a scale of the wrong
/// shape and a weight of another format (mixed formats) are typed errors naming the tensor.
#[test]
fn malformed_quantized_checkpoints_are_typed_errors_naming_the_tensor() {
    let cases = [
        (QuantAlgo::Fp8PerTensor, "weight_scale"),
        (QuantAlgo::Fp8Block, "weight_scale_inv"),
        (QuantAlgo::Nvfp4, "weight_scale_2"),
        (QuantAlgo::W4A16Mxfp4, "weight_scale"),
        (QuantAlgo::W4A16Int4, "weight_zero"),
        (QuantAlgo::W8A16, "weight_scale"),
    ];
    for (algo, scale) in cases {
        let q = quant_config(algo);
        let layer = float_layer(3, true, false, SMALL);
        let good = quantized_checkpoint(&q, &layer, [1.0, 1.0]);
        let c = layer_config(&q, Activation::Swiglu, false, SMALL);
        let load = |src: &MemoryWeights| {
            let p = moe_core::ExpertPartition::compute(&c, true).unwrap();
            let mut b = CpuBackend::create(&c, p).unwrap();
            b.create_weights().unwrap();
            b.load_weights(src, false).expect_err("the load must fail")
        };
        let name = expert_tensor_name(4, Proj::W3, scale);

        let mut src = good.clone();
        src.remove(&name);
        let err = load(&src);
        assert!(
            matches!(&err, MoeError::MissingTensor { name: n } if *n == name),
            "{algo:?}: {err}"
        );

        let mut src = good.clone();
        let t = good.tensor(&name).unwrap();
        src.insert(name.clone(), Tensor::zeros(t.dtype(), vec![2, t.numel()]));
        let err = load(&src);
        assert!(
            matches!(&err, MoeError::ShapeMismatch { what, .. } if *what == name),
            "{algo:?}: {err}"
        );

        let weight = expert_tensor_name(1, Proj::W2, "weight");
        let mut src = good.clone();
        src.insert(
            weight.clone(),
            Tensor::zeros(DType::BF16, vec![SMALL.hidden, SMALL.inter]),
        );
        let err = load(&src);
        assert!(
            matches!(&err, MoeError::DTypeMismatch { what, .. } if *what == weight),
            "{algo:?}: {err}"
        );
    }
}
