//! Tests of [`Fp8BlockMethod`]: view and registrations, partial edge blocks, activation
//! groups, block-splitting shards refused, errors.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{Activation, DType, LayerLayout, MemoryWeights, QuantAlgo, QuantConfig, Tensor};
use moe_kernels::cpu::act_quant::ActQuant;

use crate::quantize::fp8_block;
use crate::test_util::*;

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::Fp8Block), &[]);
    // A non-default block size flows from the config.
    check_method(
        &QuantConfig {
            algo: QuantAlgo::Fp8Block,
            weight_block_size: Some([64, 32]),
            group_size: None,
        },
        &[],
    );
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::Fp8Block), "weight_scale_inv");
}

#[test]
fn partial_edge_blocks_and_activation_groups() {
    // Relu2 with H = 300, I = 200: every edge block is partial (ceil scale shapes).
    let (h, i) = (300, 200);
    let q = config(QuantAlgo::Fp8Block);
    let mut src = MemoryWeights::new();
    for (p, rows, cols) in [(Proj::W1, i, h), (Proj::W2, h, i)] {
        for (suffix, t) in fp8_block(&values(rows * cols, rows as u64, 0.2), rows, cols, [128, 128]).unwrap() {
            src.insert(expert_tensor_name(0, p, suffix), t);
        }
    }
    assert_eq!(src.tensor("0.w1.weight_scale_inv").unwrap().shape(), &[2, 3]);
    let base = layout(Activation::Relu2, false, 1, 0, vec![0]);
    let l = LayerLayout {
        hidden_size: h,
        intermediate_size: i,
        intermediate_per_partition: i,
        ..base
    };
    let m = method(&q);
    let w = load(m.as_ref(), &l, &src);
    let v = m.expert_view(&w, &l, 0).unwrap();
    assert_eq!(decode(v.w3_w1), dequantize(&q, &src, 0, Proj::W1, i, h));
    assert_eq!(decode(v.w2), dequantize(&q, &src, 0, Proj::W2, h, i));
    assert_eq!(
        (v.fc1_input, v.fc2_input),
        (ActQuant::Fp8Group { group: 128 }, ActQuant::Fp8Group { group: 128 })
    );
    // Not quantized before dispatch.
    let x = Tensor::from_f32_as(DType::BF16, vec![1, 2], &[0.1, 0.3]).unwrap();
    assert_eq!(
        m.quantize_input(&x, &w).unwrap().x.to_f32_vec("x").unwrap(),
        x.to_f32_vec("x").unwrap()
    );
}

#[test]
fn shards_and_halves_that_split_a_block_are_refused_naming_the_tensor() {
    let m = method(&config(QuantAlgo::Fp8Block));
    // I = 256 over tp 4: 64 rows per rank, half a 128-block.
    for rank in 0..4 {
        let err = m
            .create_weights(&layout(Activation::Swiglu, false, 4, rank, vec![0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("w3_w1_weight_scale"), "{err}");
    }
    // Gated, tp 1, I = 192: the w1 half would start inside a block of the fused scales.
    let l = LayerLayout {
        intermediate_size: 192,
        intermediate_per_partition: 192,
        ..layout(Activation::Swiglu, false, 1, 0, vec![0])
    };
    let err = m.create_weights(&l).unwrap_err().to_string();
    assert!(err.contains("w3_w1_weight_scale"), "{err}");
    // Non-gated, the same I is fine (one partial block row).
    m.create_weights(&LayerLayout {
        activation: Activation::Relu2,
        ..l
    })
    .unwrap();
}
