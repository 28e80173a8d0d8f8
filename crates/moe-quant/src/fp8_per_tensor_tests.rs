//! Tests of [`Fp8PerTensorMethod`]: view and registrations, FC1 requantization to the common
//! scale, input scales over all experts, folding, activation QDQ, errors.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{Activation, DType, MoeError, QuantAlgo, Tensor};
use moe_kernels::codec::fp8::{e4m3_to_f32, f32_to_e4m3_sat};
use moe_kernels::cpu::act_quant::ActQuant;

use crate::engine::{f32_tensor, slot_scalar};
use crate::names::*;
use crate::quantize::{amax, fp8_per_tensor};
use crate::test_util::*;

const LAYER: &[&str] = &[
    FC31_INPUT_DEQUANT,
    FC2_INPUT_DEQUANT,
    FC31_EXPERT_INPUT_SCALES,
    FC2_EXPERT_INPUT_SCALES,
];

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::Fp8PerTensor), LAYER);
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::Fp8PerTensor), "weight_scale");
}

#[test]
fn input_scales_are_maxima_over_all_experts_and_fold_into_the_dequant_factors() {
    let q = config(QuantAlgo::Fp8PerTensor);
    let m = method(&q);
    // Only expert 0 is local; expert 3 has the largest input scales ((1 + 3) / 448, (2 + 3) / 448).
    let l = layout(Activation::Swiglu, false, 1, 0, vec![0]);
    let w = load(m.as_ref(), &l, &checkpoint(&q, true, false));
    let (in31, in2) = (
        f32_tensor(&w, FC31_INPUT_DEQUANT).unwrap()[0],
        f32_tensor(&w, FC2_INPUT_DEQUANT).unwrap()[0],
    );
    assert_eq!((in31, in2), (4.0 / 448.0, 5.0 / 448.0));
    let s31 = slot_scalar(&w, W3_W1_WEIGHT_SCALE, 0).unwrap();
    assert_eq!(slot_scalar(&w, FC31_DEQUANT, 0).unwrap(), s31 * in31);
    assert_eq!(
        slot_scalar(&w, FC2_DEQUANT, 0).unwrap(),
        slot_scalar(&w, W2_WEIGHT_SCALE, 0).unwrap() * in2
    );
    let v = m.expert_view(&w, &l, 0).unwrap();
    assert_eq!(
        (v.fc1_input, v.fc2_input),
        (
            ActQuant::Fp8PerTensor { scale: in31 },
            ActQuant::Fp8PerTensor { scale: in2 }
        )
    );

    // quantize_input is the static QDQ in the input's dtype.
    let x = Tensor::from_f32_as(DType::BF16, vec![1, 2], &[0.1, -3.0]).unwrap();
    let qx = m.quantize_input(&x, &w).unwrap();
    assert_eq!(qx.x.dtype(), DType::BF16);
    assert!(qx.x_sf.is_none());
    let want: Vec<f32> = x
        .to_f32_vec("x")
        .unwrap()
        .iter()
        .map(|&v| half::bf16::from_f32(e4m3_to_f32(f32_to_e4m3_sat(v / in31)) * in31).to_f32())
        .collect();
    assert_eq!(qx.x.to_f32_vec("q").unwrap(), want);
    // Before processing there is no scale to quantize with.
    let fresh = m.create_weights(&l).unwrap();
    assert!(matches!(m.quantize_input(&x, &fresh), Err(MoeError::Lifecycle { .. })));
}

#[test]
fn missing_input_scale_of_a_remote_expert_is_named() {
    let q = config(QuantAlgo::Fp8PerTensor);
    let m = method(&q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![0]);
    let mut src = checkpoint(&q, true, false);
    src.remove("3.w2.input_scale");
    let mut w = m.create_weights(&l).unwrap();
    match m.load_weights(&mut w, &l, &src, false) {
        Err(MoeError::MissingTensor { name }) => assert_eq!(name, "3.w2.input_scale"),
        other => panic!("{other:?}"),
    }
    // A partial load defers the question to processing, which names it too.
    m.load_weights(&mut w, &l, &src, true).unwrap();
    match m.process_weights_after_loading(&mut w, &l) {
        Err(MoeError::MissingTensor { name }) => assert_eq!(name, "3.w2.input_scale"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fc1_halves_are_requantized_to_the_common_scale() {
    let q = config(QuantAlgo::Fp8PerTensor);
    let m = method(&q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![1]);
    let mut src = checkpoint(&q, true, false);
    // Re-export expert 1's w3 with its own (smaller) scale: the halves now disagree.
    let w3 = values(I * H, 103, 0.07);
    for (suffix, t) in fp8_per_tensor(&w3, I, H, None, 2.0).unwrap() {
        src.insert(expert_tensor_name(1, Proj::W3, suffix), t);
    }
    let s3 = amax(&w3) / 448.0;
    let s1 = src.tensor("1.w1.weight_scale").unwrap().as_f32("s").unwrap()[0];
    assert!(s1 > s3);
    let w = load(m.as_ref(), &l, &src);
    assert_eq!(slot_scalar(&w, W3_W1_WEIGHT_SCALE, 0).unwrap(), s1);
    let fc1 = decode(m.expert_view(&w, &l, 0).unwrap().w3_w1);
    let codes3 = src.tensor("1.w3.weight").unwrap().as_bytes("c").unwrap();
    for (got, &c) in fc1[..I * H].iter().zip(codes3) {
        assert_eq!(*got, e4m3_to_f32(f32_to_e4m3_sat(e4m3_to_f32(c) * s3 / s1)) * s1);
    }
    // The w1 half, which holds the common scale, is unchanged.
    assert_eq!(&fc1[I * H..], dequantize(&q, &src, 1, Proj::W1, I, H).as_slice());
}
