//! The test data's PRNG: the workspace's one SplitMix64 (`moe_core::prng`, uniform bits and
//! Box-Muller normals, reproducible from its seed on every platform), and the seed of a cell
//! derived from its id.

pub use moe_core::prng::SplitMix64;

/// A seed derived from a string (FNV-1a), so a cell's data depends on its id, not on its
/// position in the matrix.
pub fn seed_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
