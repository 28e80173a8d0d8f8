//! Tests of [`Nvfp4Method`]: view and registrations, global scales and alphas, w1/w3 input
//! scales that disagree, weight_scale_2 that differ, activation QDQ, errors.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{Activation, DType, MoeError, QuantAlgo, Tensor};
use moe_kernels::codec::fp8::{e4m3_to_f32, f32_to_e4m3_sat};
use moe_kernels::cpu::act_quant::{ActQuant, qdq_rows};

use crate::engine::{f32_tensor, slot_scalar};
use crate::names::*;
use crate::quantize::{amax, nvfp4};
use crate::test_util::*;

const LAYER: &[&str] = &[
    FC31_INPUT_SCALE,
    FC2_INPUT_SCALE,
    FC31_EXPERT_INPUT_SCALES,
    FC2_EXPERT_INPUT_SCALES,
];

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::Nvfp4), LAYER);
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::Nvfp4), "weight_scale");
    check_errors(&config(QuantAlgo::Nvfp4), "weight_scale_2");
}

#[test]
fn global_scales_and_alphas_fold_over_all_experts() {
    let q = config(QuantAlgo::Nvfp4);
    let m = method(&q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![2]);
    let w = load(m.as_ref(), &l, &checkpoint(&q, true, false));
    // input_scale = amax / 2688 with amax 1 + e (FC1) and 2 + e (FC2); the maxima are expert 3's.
    let (g31, g2) = (
        f32_tensor(&w, FC31_INPUT_SCALE).unwrap()[0],
        f32_tensor(&w, FC2_INPUT_SCALE).unwrap()[0],
    );
    assert_eq!(g31, 1.0 / (4.0f32 / 2688.0));
    assert_eq!(g2, 1.0 / (5.0f32 / 2688.0));
    let s2 = slot_scalar(&w, W3_W1_WEIGHT_SCALE_2, 0).unwrap();
    assert_eq!(slot_scalar(&w, FC31_ALPHA, 0).unwrap(), s2 / g31);
    assert_eq!(
        slot_scalar(&w, FC2_ALPHA, 0).unwrap(),
        slot_scalar(&w, W2_WEIGHT_SCALE_2, 0).unwrap() / g2
    );
    let v = m.expert_view(&w, &l, 0).unwrap();
    assert_eq!(
        (v.fc1_input, v.fc2_input),
        (
            ActQuant::Nvfp4 { global_scale: g31 },
            ActQuant::Nvfp4 { global_scale: g2 }
        )
    );

    // quantize_input is the NVFP4 QDQ with the FC1 global scale (f32 in, f32 out: exact).
    let xv = values(2 * H, 9, 3.0);
    let x = Tensor::from_f32(vec![2, H], xv.clone()).unwrap();
    let mut want = xv;
    qdq_rows(&ActQuant::Nvfp4 { global_scale: g31 }, &mut want, H).unwrap();
    assert_eq!(
        m.quantize_input(&x, &w).unwrap().x.as_f32("x").unwrap(),
        want.as_slice()
    );
    assert_eq!(
        m.quantize_input(&x.to_dtype(DType::BF16).unwrap(), &w)
            .unwrap()
            .x
            .dtype(),
        DType::BF16
    );
}

#[test]
fn w1_and_w3_input_scales_must_agree() {
    let q = config(QuantAlgo::Nvfp4);
    let m = method(&q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![0]);
    let mut src = checkpoint(&q, true, false);
    // Expert 1 is not even local: every expert's scales are read.
    src.insert("1.w3.input_scale", Tensor::from_f32(vec![], vec![1.0]).unwrap());
    let mut w = m.create_weights(&l).unwrap();
    match m.load_weights(&mut w, &l, &src, false) {
        Err(MoeError::BadCheckpoint { path, detail }) => {
            assert_eq!(path, "1.w3.input_scale");
            assert!(detail.contains("1.w1.input_scale"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn differing_weight_scale_2_rescales_the_smaller_half() {
    let q = config(QuantAlgo::Nvfp4);
    let m = method(&q);
    let l = layout(Activation::Swiglu, false, 1, 0, vec![0]);
    let mut src = checkpoint(&q, true, false);
    // Re-export expert 0's w3 with its own s2 (smaller than the shared one).
    let w3 = values(I * H, 3, 0.07);
    for (suffix, t) in nvfp4(&w3, I, H, None, 1.0).unwrap() {
        src.insert(expert_tensor_name(0, Proj::W3, suffix), t);
    }
    let s3 = amax(&w3) / 2688.0;
    let s1 = src.tensor("0.w1.weight_scale_2").unwrap().as_f32("s").unwrap()[0];
    assert!(s1 > s3);
    let w = load(m.as_ref(), &l, &src);
    assert_eq!(slot_scalar(&w, W3_W1_WEIGHT_SCALE_2, 0).unwrap(), s1);
    let sf = src.tensor("0.w3.weight_scale").unwrap().as_bytes("sf").unwrap();
    let stored = crate::engine::slot_bytes_of(&w, W3_W1_WEIGHT_SCALE, 0).unwrap();
    for (&got, &c) in stored[..sf.len()].iter().zip(sf) {
        assert_eq!(got, f32_to_e4m3_sat(e4m3_to_f32(c) * s3 / s1));
    }
    // The decoded w3 half stays close to the checkpoint's (within the E4M3 rounding of its
    // block scales), where keeping the scales would have scaled it by s1 / s3.
    let fc1 = decode(m.expert_view(&w, &l, 0).unwrap().w3_w1);
    let want = dequantize(&q, &src, 0, Proj::W3, I, H);
    let (num, den) = fc1[..I * H]
        .iter()
        .zip(&want)
        .fold((0.0f64, 0.0f64), |(n, d), (&g, &w)| {
            (n + f64::from(g - w).powi(2), d + f64::from(w).powi(2))
        });
    assert!((num / den).sqrt() < 0.05, "rel L2 {}", (num / den).sqrt());
}
