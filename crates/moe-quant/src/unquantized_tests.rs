//! Tests of [`UnquantizedMethod`]: layout, exact TP shard placement, errors, registrations.

use std::collections::BTreeSet;

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{Activation, DType, LayerLayout, MemoryWeights, MoeError, QuantMethod, Tensor};

use super::UnquantizedMethod;
use crate::names::{W2_BIAS, W2_WEIGHT, W3_W1_BIAS, W3_W1_WEIGHT};
use crate::slot_io::read_slot;

fn layout(activation: Activation, bias: bool, tp_size: usize, tp_rank: usize, local: Vec<usize>) -> LayerLayout {
    LayerLayout {
        num_experts: 6,
        hidden_size: 2,
        intermediate_size: 4,
        intermediate_per_partition: 4 / tp_size,
        tp_rank,
        tp_size,
        activation,
        bias,
        dtype: DType::F32,
        local_expert_ids: local,
    }
}

fn code(p: Proj) -> f32 {
    match p {
        Proj::W1 => 100.0,
        Proj::W2 => 200.0,
        Proj::W3 => 300.0,
    }
}

/// Checkpoint of 6 experts where every value spells its origin:
/// weight `e*1000 + proj*100 + row*10 + col`, bias `e*1000 + proj*100 + 50 + i`
/// (proj: w1 = 1, w2 = 2, w3 = 3), with H = 2 and I = 4.
fn checkpoint(with_w3: bool) -> MemoryWeights {
    let mut w = MemoryWeights::new();
    for e in 0..6 {
        let base = 1000.0 * e as f32;
        let mut projs = vec![(Proj::W1, 4, 2), (Proj::W2, 2, 4)];
        if with_w3 {
            projs.push((Proj::W3, 4, 2));
        }
        for (p, rows, cols) in projs {
            let data: Vec<f32> = (0..rows * cols)
                .map(|i| base + code(p) + 10.0 * (i / cols) as f32 + (i % cols) as f32)
                .collect();
            w.insert(
                expert_tensor_name(e, p, "weight"),
                Tensor::from_f32(vec![rows, cols], data).unwrap(),
            );
            let blen = if p == Proj::W2 { 2 } else { 4 };
            let bias: Vec<f32> = (0..blen).map(|i| base + code(p) + 50.0 + i as f32).collect();
            w.insert(
                expert_tensor_name(e, p, "bias"),
                Tensor::from_f32(vec![blen], bias).unwrap(),
            );
        }
    }
    w
}

fn slot(w: &moe_core::ExpertWeights, name: &str, s: usize) -> Vec<f32> {
    read_slot(w.get(name).unwrap(), name, s).unwrap()
}

#[test]
fn tp_shards_land_in_the_right_half_of_fc1() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Swiglu, true, 2, 1, vec![2, 0]);
    let mut w = m.create_weights(&l).unwrap();
    m.load_weights(&mut w, &l, &checkpoint(true), false).unwrap();
    m.process_weights_after_loading(&mut w, &l).unwrap();
    // Slot 0 serves expert 2; rank 1 of 2 holds intermediate rows 2..4.
    // FC1 = [w3 rows 2, 3 ; w1 rows 2, 3].
    assert_eq!(
        slot(&w, W3_W1_WEIGHT, 0),
        vec![2320., 2321., 2330., 2331., 2120., 2121., 2130., 2131.]
    );
    // w2 [H, I] keeps columns 2..4 of each row.
    assert_eq!(slot(&w, W2_WEIGHT, 0), vec![2202., 2203., 2212., 2213.]);
    assert_eq!(slot(&w, W3_W1_BIAS, 0), vec![2352., 2353., 2152., 2153.]);
    // The w2 bias lives on TP rank 0 only.
    assert_eq!(slot(&w, W2_BIAS, 0), vec![0., 0.]);
    // Slot 1 serves expert 0.
    assert_eq!(
        slot(&w, W3_W1_WEIGHT, 1),
        vec![320., 321., 330., 331., 120., 121., 130., 131.]
    );

    let l0 = layout(Activation::Swiglu, true, 2, 0, vec![2, 0]);
    let mut w0 = m.create_weights(&l0).unwrap();
    m.load_weights(&mut w0, &l0, &checkpoint(true), false).unwrap();
    assert_eq!(
        slot(&w0, W3_W1_WEIGHT, 0),
        vec![2300., 2301., 2310., 2311., 2100., 2101., 2110., 2111.]
    );
    assert_eq!(slot(&w0, W2_WEIGHT, 0), vec![2200., 2201., 2210., 2211.]);
    assert_eq!(slot(&w0, W2_BIAS, 0), vec![2250., 2251.]);
}

#[test]
fn relu2_fills_fc1_with_w1_only() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Relu2, true, 1, 0, vec![1]);
    let mut w = m.create_weights(&l).unwrap();
    assert_eq!(w.get(W3_W1_WEIGHT).unwrap().shape(), &[1, 4, 2]);
    m.load_weights(&mut w, &l, &checkpoint(false), false).unwrap();
    assert_eq!(
        slot(&w, W3_W1_WEIGHT, 0),
        vec![1100., 1101., 1110., 1111., 1120., 1121., 1130., 1131.]
    );
    assert_eq!(slot(&w, W3_W1_BIAS, 0), vec![1150., 1151., 1152., 1153.]);
    assert_eq!(slot(&w, W2_BIAS, 0), vec![1250., 1251.]);
}

#[test]
fn registrations_cover_every_created_tensor() {
    let m = UnquantizedMethod;
    for act in [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2] {
        for bias in [false, true] {
            let l = layout(act, bias, 2, 0, vec![3, 4, 5]);
            let w = m.create_weights(&l).unwrap();
            let regs = m.expert_tensors(&l);
            let created: BTreeSet<_> = w.tensors.keys().cloned().collect();
            let registered: BTreeSet<_> = regs.iter().map(|r| r.name.clone()).collect();
            assert_eq!(created, registered, "{act:?} bias={bias}");
            for r in &regs {
                let t = &w.tensors[&r.name];
                assert_eq!(t.shape()[0], 3);
                assert_eq!(&t.shape()[1..], r.per_slot_shape.as_slice());
                assert_eq!(t.dtype(), r.dtype);
            }
            assert_eq!(created.len(), if bias { 4 } else { 2 });
        }
    }
}

#[test]
fn missing_tensor_is_an_error_unless_partial() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Swiglu, false, 1, 0, vec![2, 0]);
    let mut src = checkpoint(true);
    src.remove("0.w3.weight");
    let mut w = m.create_weights(&l).unwrap();
    match m.load_weights(&mut w, &l, &src, false) {
        Err(MoeError::MissingTensor { name }) => assert_eq!(name, "0.w3.weight"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let mut w = m.create_weights(&l).unwrap();
    m.load_weights(&mut w, &l, &src, true).unwrap();
    assert_eq!(w.loaded, vec![true, false]);
    let err = m.process_weights_after_loading(&mut w, &l).unwrap_err().to_string();
    assert!(err.contains("slot 1 (expert 0)"), "{err}");

    // A second source completes the layer.
    let mut rest = MemoryWeights::new();
    for p in [Proj::W1, Proj::W2, Proj::W3] {
        let name = expert_tensor_name(0, p, "weight");
        let t = checkpoint(true).tensor(&name).unwrap().clone();
        rest.insert(name, t);
    }
    m.load_weights(&mut w, &l, &rest, true).unwrap();
    m.process_weights_after_loading(&mut w, &l).unwrap();
}

#[test]
fn wrong_shape_names_the_tensor_and_loads_nothing_of_the_slot() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Swiglu, false, 1, 0, vec![5]);
    let mut src = checkpoint(true);
    src.insert("5.w2.weight", Tensor::from_f32(vec![4, 2], vec![0.0; 8]).unwrap());
    let mut w = m.create_weights(&l).unwrap();
    match m.load_weights(&mut w, &l, &src, true) {
        Err(MoeError::ShapeMismatch { what, actual, .. }) => {
            assert_eq!(what, "5.w2.weight");
            assert_eq!(actual, vec![4, 2]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert_eq!(w.loaded, vec![false]);
    assert!(
        slot(&w, W3_W1_WEIGHT, 0).iter().all(|&v| v == 0.0),
        "nothing of the slot may be written"
    );
}

#[test]
fn non_float_source_is_a_dtype_error_naming_the_tensor() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Relu2, false, 1, 0, vec![0]);
    let mut src = checkpoint(false);
    src.insert("0.w1.weight", Tensor::from_i32(vec![4, 2], vec![0; 8]).unwrap());
    let mut w = m.create_weights(&l).unwrap();
    match m.load_weights(&mut w, &l, &src, false) {
        Err(MoeError::DTypeMismatch { what, .. }) => assert_eq!(what, "0.w1.weight"),
        other => panic!("expected DTypeMismatch, got {other:?}"),
    }
}

#[test]
fn converts_source_dtype_with_round_to_nearest_even() {
    let m = UnquantizedMethod;
    let mut l = layout(Activation::Relu2, false, 1, 0, vec![0]);
    l.dtype = DType::BF16;
    let mut src = checkpoint(false);
    // 1 + 2^-8 ties down to 1 (even); 1 + 3 * 2^-8 ties up to 1 + 2^-6 (even).
    let w1 = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
    src.insert("0.w1.weight", Tensor::from_f32(vec![4, 2], w1.to_vec()).unwrap());
    // A bf16 source into a bf16 layer is copied exactly.
    let w2 = Tensor::from_f32_as(DType::BF16, vec![2, 4], &[0.5; 8]).unwrap();
    src.insert("0.w2.weight", w2);
    let mut w = m.create_weights(&l).unwrap();
    m.load_weights(&mut w, &l, &src, false).unwrap();
    assert_eq!(w.get(W3_W1_WEIGHT).unwrap().dtype(), DType::BF16);
    assert_eq!(&slot(&w, W3_W1_WEIGHT, 0)[..3], &[1.0, 1.015625, 2.0]);
    assert_eq!(slot(&w, W2_WEIGHT, 0), vec![0.5; 8]);
}

#[test]
fn lifecycle_and_contract_details() {
    let m = UnquantizedMethod;
    let l = layout(Activation::Swiglu, false, 1, 0, vec![0]);
    let mut empty = moe_core::ExpertWeights::default();
    assert!(matches!(
        m.load_weights(&mut empty, &l, &checkpoint(true), false),
        Err(MoeError::Lifecycle { .. })
    ));
    // A layout whose per-rank width disagrees with the TP split is refused.
    let mut bad = l.clone();
    bad.intermediate_per_partition = 3;
    assert!(matches!(m.create_weights(&bad), Err(MoeError::InvalidConfig { .. })));
    let mut bad = l.clone();
    bad.local_expert_ids = vec![6];
    assert!(matches!(m.create_weights(&bad), Err(MoeError::InvalidConfig { .. })));

    let mut w = m.create_weights(&l).unwrap();
    let x = Tensor::from_f32(vec![1, 2], vec![1.0, 2.0]).unwrap();
    let q = m.quantize_input(&x, &w).unwrap();
    assert_eq!(q.x.as_f32("x").unwrap(), &[1.0, 2.0]);
    assert!(q.x_sf.is_none());
    // The identity borrows the caller's activations: no copy of the input.
    assert!(q.is_borrowed());
    assert!(std::ptr::eq(
        q.x.as_f32("x").unwrap().as_ptr(),
        x.as_f32("x").unwrap().as_ptr()
    ));
    assert_eq!(m.eplb_support_status(), moe_core::EplbSupportStatus::Supported);
    assert!(!m.need_load_shared_weights());
    m.load_weights(&mut w, &l, &checkpoint(true), false).unwrap();
    m.transform_weights(&mut w, &l).unwrap();
    assert!(w.transformed);
    m.load_weights(&mut w, &l, &checkpoint(true), false).unwrap();
    assert!(!w.transformed, "loading new bytes clears the transform flag");
}

#[test]
fn views_decode_the_checkpoint_in_the_layer_dtype() {
    use crate::test_util::{check_method, config};
    check_method(&config(moe_core::QuantAlgo::None), &[]);
}
