//! Shared checks of the quant methods' tests: registrations against created tensors, the view
//! of every slot against an independent dequantization of the checkpoint (TP shards
//! included), and the typed errors of malformed checkpoints.

use std::collections::BTreeSet;

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{
    Activation, DType, ExpertWeights, LayerLayout, MemoryWeights, MoeError, QuantAlgo, QuantConfig, Tensor,
};
use moe_kernels::cpu::weight_slice::WeightSlice;

use crate::quantize::{ExpertMatrices, quantize_expert};
use crate::shard::Shard;
use crate::{HostQuantMethod, select_host_quant_method};

pub const E: usize = 4;
pub const H: usize = 256;
pub const I: usize = 256;

pub fn layout(activation: Activation, bias: bool, tp_size: usize, tp_rank: usize, local: Vec<usize>) -> LayerLayout {
    LayerLayout {
        num_experts: E,
        hidden_size: H,
        intermediate_size: I,
        intermediate_per_partition: Shard::of(I, tp_size, tp_rank).width,
        tp_rank,
        tp_size,
        activation,
        bias,
        dtype: DType::BF16,
        local_expert_ids: local,
    }
}

pub fn method(q: &QuantConfig) -> Box<dyn HostQuantMethod> {
    select_host_quant_method(q).unwrap()
}

pub fn config(algo: QuantAlgo) -> QuantConfig {
    QuantConfig {
        algo,
        ..QuantConfig::default()
    }
}

/// Deterministic values in [-scale, scale).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A checkpoint of `E` experts quantized as `q` (with biases when asked); input amaxima grow
/// with the expert so the maximum over experts is the last one's.
pub fn checkpoint(q: &QuantConfig, gated: bool, bias: bool) -> MemoryWeights {
    let mut src = MemoryWeights::new();
    for e in 0..E {
        let seed = 100 * e as u64;
        let (w1, w3, w2) = (
            values(I * H, seed + 1, 0.1),
            values(I * H, seed + 3, 0.07),
            values(H * I, seed + 2, 0.1),
        );
        let m = ExpertMatrices {
            w1: &w1,
            w3: gated.then_some(w3.as_slice()),
            w2: &w2,
            hidden: H,
            intermediate: I,
        };
        for (name, t) in quantize_expert(q, e, &m, [1.0 + e as f32, 2.0 + e as f32]).unwrap() {
            src.insert(name, t);
        }
        if bias {
            let mut projs = vec![(Proj::W1, I), (Proj::W2, H)];
            if gated {
                projs.push((Proj::W3, I));
            }
            for (p, n) in projs {
                let b = Tensor::from_f32_as(DType::BF16, vec![n], &values(n, seed + 7, 0.5)).unwrap();
                src.insert(expert_tensor_name(e, p, "bias"), b);
            }
        }
    }
    src
}

/// Created, loaded, processed and scale-folded weights of `m` for `l` from `src`.
pub fn load(m: &dyn HostQuantMethod, l: &LayerLayout, src: &MemoryWeights) -> ExpertWeights {
    let mut w = m.create_weights(l).unwrap();
    m.load_weights(&mut w, l, src, false).unwrap();
    m.process_weights_after_loading(&mut w, l).unwrap();
    m.setup_quant_scales(&mut w, l).unwrap();
    w
}

fn f32s(src: &MemoryWeights, name: &str) -> Vec<f32> {
    src.tensor(name)
        .unwrap_or_else(|| panic!("{name}"))
        .to_f32_vec(name)
        .unwrap()
}

/// The checkpoint's `{e}.{proj}` weight `[out, in]` dequantized with the codecs directly
/// (`quantize::dequantize`), independently of the kernels' decoders.
pub fn dequantize(q: &QuantConfig, src: &MemoryWeights, e: usize, proj: Proj, out: usize, inp: usize) -> Vec<f32> {
    let w = crate::quantize::dequantize(q, src, e, proj, out, inp).unwrap();
    if q.algo == QuantAlgo::None {
        // Unquantized weights are kept in the layer dtype of `layout()`, bf16.
        w.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
    } else {
        w
    }
}

/// All of `w` decoded through `widen_into`.
pub fn decode(w: WeightSlice<'_>) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    w.widen_into(0, &mut out).unwrap();
    out
}

/// The view of every local slot decodes to this rank's shard of the dequantized checkpoint
/// (FC1 `[w3 rows ; w1 rows]`, FC2 the columns), for gated and non-gated layers, TP 1 and 2,
/// with biases; and `expert_tensors` lists exactly the created per-slot tensors, the rest
/// being the `layer` tensors named by the caller.
pub fn check_method(q: &QuantConfig, layer: &[&str]) {
    for (act, gated) in [(Activation::Swiglu, true), (Activation::Relu2, false)] {
        let src = checkpoint(q, gated, true);
        for (tp, rank) in [(1, 0), (2, 0), (2, 1)] {
            let m = method(q);
            let l = layout(act, true, tp, rank, vec![3, 1]);
            let w = load(m.as_ref(), &l, &src);
            check_registrations(m.as_ref(), &l, &w, layer);
            let shard = Shard::of(I, tp, rank);
            let ipp = shard.width;
            for (slot, &e) in l.local_expert_ids.iter().enumerate() {
                let v = m.expert_view(&w, &l, slot).unwrap();
                let fc1 = decode(v.w3_w1);
                let halves: &[Proj] = if gated { &[Proj::W3, Proj::W1] } else { &[Proj::W1] };
                for (hf, &p) in halves.iter().enumerate() {
                    let full = dequantize(q, &src, e, p, I, H);
                    let want = &full[shard.start * H..(shard.start + shard.len) * H];
                    assert_eq!(
                        &fc1[hf * ipp * H..hf * ipp * H + want.len()],
                        want,
                        "{q:?} tp {tp}/{rank} expert {e} {p:?}"
                    );
                }
                let full2 = dequantize(q, &src, e, Proj::W2, H, I);
                let fc2 = decode(v.w2);
                for r in 0..H {
                    assert_eq!(
                        &fc2[r * ipp..r * ipp + shard.len],
                        &full2[r * I + shard.start..r * I + shard.start + shard.len]
                    );
                }
                let b2 = v.w2_bias.unwrap();
                let want_b2 = if rank == 0 {
                    f32s(&src, &expert_tensor_name(e, Proj::W2, "bias"))
                } else {
                    vec![0.0; H]
                };
                assert_eq!((0..H).map(|c| b2.at(c)).collect::<Vec<_>>(), want_b2);
            }
        }
    }
}

/// `expert_tensors` = created tensors minus the layer tensors `layer`, shapes and dtypes
/// included.
pub fn check_registrations(m: &dyn HostQuantMethod, l: &LayerLayout, w: &ExpertWeights, layer: &[&str]) {
    let regs = m.expert_tensors(l);
    let created: BTreeSet<String> = w.tensors.keys().cloned().collect();
    let registered: BTreeSet<String> = regs.iter().map(|r| r.name.clone()).collect();
    let layer: BTreeSet<String> = layer.iter().map(|s| s.to_string()).collect();
    assert!(registered.is_disjoint(&layer), "{registered:?} vs layer {layer:?}");
    let expected: BTreeSet<String> = registered.union(&layer).cloned().collect();
    assert_eq!(created, expected, "{}: created vs registered + layer tensors", m.name());
    for r in &regs {
        let t = &w.tensors[&r.name];
        assert_eq!(t.shape()[0], l.num_local_slots(), "{}", r.name);
        assert_eq!(&t.shape()[1..], r.per_slot_shape.as_slice(), "{}", r.name);
        assert_eq!(t.dtype(), r.dtype, "{}", r.name);
    }
}

fn expect_named(r: moe_core::Result<()>, name: &str) -> MoeError {
    let err = r.expect_err(name);
    assert!(err.to_string().contains(name), "error must name `{name}`: {err}");
    err
}

/// A missing scale, a scale of the wrong shape and a weight of another format are typed errors
/// naming the tensor, and nothing of the slot is written.
pub fn check_errors(q: &QuantConfig, scale_suffix: &str) {
    let m = method(q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![2, 0]);
    let good = checkpoint(q, true, false);
    let load_from = |src: &MemoryWeights| {
        let mut w = m.create_weights(&l).unwrap();
        let r = m.load_weights(&mut w, &l, src, false);
        (r, w)
    };

    let scale = expert_tensor_name(2, Proj::W2, scale_suffix);
    let mut src = good.clone();
    src.remove(&scale);
    let (r, _) = load_from(&src);
    assert!(matches!(expect_named(r, &scale), MoeError::MissingTensor { .. }));

    let mut src = good.clone();
    let t = good.tensor(&scale).unwrap();
    let wrong = Tensor::zeros(t.dtype(), vec![t.numel() + 1]);
    src.insert(scale.clone(), wrong);
    let (r, w) = load_from(&src);
    assert!(matches!(expect_named(r, &scale), MoeError::ShapeMismatch { .. }));
    assert_eq!(w.loaded, vec![false, false]);

    let weight = expert_tensor_name(0, Proj::W1, "weight");
    let mut src = good.clone();
    src.insert(weight.clone(), Tensor::zeros(DType::BF16, vec![I, H]));
    let (r, w) = load_from(&src);
    assert!(matches!(expect_named(r, &weight), MoeError::DTypeMismatch { .. }));
    // Slot 0 (expert 2) was committed before slot 1 (expert 0) failed; slot 1 untouched.
    assert_eq!(w.loaded, vec![true, false]);
}
