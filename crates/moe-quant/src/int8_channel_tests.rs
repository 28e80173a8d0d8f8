//! Tests of [`Int8ChannelMethod`]: view and registrations (per-row scales shard with w1/w3 and
//! not with w2), errors.

use moe_core::QuantAlgo;

use crate::test_util::*;

#[test]
fn views_decode_the_checkpoint_and_every_tensor_is_registered() {
    check_method(&config(QuantAlgo::W8A16), &[]);
}

#[test]
fn malformed_checkpoints_name_the_tensor() {
    check_errors(&config(QuantAlgo::W8A16), "weight_scale");
}
