//! Tests of [`Int4GroupMethod`]: view and registrations for two group sizes, errors naming
//! scales and zero points.

use moe_core::{QuantAlgo, QuantConfig};

use crate::test_util::*;

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::W4A16Int4), &[]);
    check_method(
        &QuantConfig {
            algo: QuantAlgo::W4A16Int4,
            weight_block_size: None,
            group_size: Some(64),
        },
        &[],
    );
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::W4A16Int4), "weight_scale");
    check_errors(&config(QuantAlgo::W4A16Int4), "weight_zero");
}
