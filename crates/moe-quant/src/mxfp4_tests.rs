//! Tests of [`Mxfp4Method`]: view and registrations (with biases), E8M0-typed scales, block
//! splitting refused, errors.

use moe_core::weights::Proj;
use moe_core::{Activation, DType, HostStorage, LayerLayout, QuantAlgo, Tensor};

use crate::test_util::*;

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::W4A16Mxfp4), &[]);
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::W4A16Mxfp4), "weight_scale");
}

#[test]
fn e8m0_typed_scales_load_like_u8_ones() {
    let q = config(QuantAlgo::W4A16Mxfp4);
    let m = method(&q);
    let l = layout(Activation::GPT_OSS, true, 1, 0, vec![1]);
    let src = checkpoint(&q, true, true);
    let mut typed = src.clone();
    for p in ["1.w1.weight_scale", "1.w3.weight_scale", "1.w2.weight_scale"] {
        let t = src.tensor(p).unwrap();
        let b = t.as_bytes(p).unwrap().to_vec();
        typed.insert(
            p,
            Tensor::from_host(DType::E8M0, t.shape().to_vec(), HostStorage::Bytes(b)).unwrap(),
        );
    }
    let (a, b) = (load(m.as_ref(), &l, &src), load(m.as_ref(), &l, &typed));
    let (va, vb) = (m.expert_view(&a, &l, 0).unwrap(), m.expert_view(&b, &l, 0).unwrap());
    assert_eq!(decode(va.w3_w1), decode(vb.w3_w1));
    assert_eq!(decode(vb.w2), dequantize(&q, &src, 1, Proj::W2, H, I));
}

#[test]
fn a_tp_shard_that_splits_a_block_is_refused_naming_the_tensor() {
    // I = 96 (three 32-blocks) over tp 2: 48 per rank, a block and a half.
    let m = method(&config(QuantAlgo::W4A16Mxfp4));
    let l = LayerLayout {
        intermediate_size: 96,
        intermediate_per_partition: 48,
        ..layout(Activation::Swiglu, false, 2, 1, vec![0])
    };
    let err = m.create_weights(&l).unwrap_err().to_string();
    assert!(err.contains("w2_weight_scale"), "{err}");
}
