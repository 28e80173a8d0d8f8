//! [`OwnBlock`]: the block a block sum (`sum_blocks_with`) reads in place, the same type in
//! every build.

use moe_core::Tensor;

/// The block `sum_blocks_with` reads where it is instead of from the packed peer blocks: block
/// number `index`, `tensor`'s elements from `first` on.
#[derive(Clone, Copy, Debug)]
pub struct OwnBlock<'a> {
    pub index: usize,
    pub tensor: &'a Tensor,
    pub first: usize,
}
