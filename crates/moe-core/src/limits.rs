//! The bounds on every number and file a user hands the runtime, in one place.
//!
//! Each limit is far above what a real model or deployment needs (the largest published MoE
//! models have about 130 layers, 512 experts, hidden sizes of 16k and a few hundred EPLB
//! slots) and low enough that a value at the limit cannot overflow a size product or ask for
//! an allocation the checks have not seen. Inputs are checked against them before anything is
//! allocated from them, and refusals are [`MoeError::InvalidConfig`] naming the field, the
//! value and the limit. `docs/LIMITS.md` lists them with their reasons; keep the two in step.
//!
//! The checked-arithmetic helpers here ([`checked_product`], [`bytes_of`]) turn the size
//! products of inputs into typed errors instead of wrapping (release builds) or panicking.

use crate::error::{MoeError, Result};

/// Layers of a model (`num_hidden_layers`, layer indices, rows of a load file).
pub const MAX_LAYERS: usize = 1 << 16;
/// Routed experts of one layer (also entries of a load-file row).
pub const MAX_EXPERTS: usize = 1 << 16;
/// Physical EPLB slots of one layer (`num_slots`, `--eplb-slots`, `--num-slots`).
pub const MAX_SLOTS: usize = 1 << 16;
/// `hidden_size`, `intermediate_size` and other single dimensions of a layer.
pub const MAX_DIM: usize = 1 << 20;
/// Tokens of one forward (`--tokens`, `--max-tokens-per-chunk`, `moe_max_num_tokens`).
pub const MAX_TOKENS: usize = 1 << 24;
/// Ranks of one layer (`--world`, `ep_size * tp_size`): one thread each in-process.
pub const MAX_WORLD: usize = 1024;
/// Elements of one layer's routed expert weights (all experts, FC1 and FC2): 2^40 elements
/// is 2 TiB of bf16, past any host or device; sizes beyond are surely wrong.
pub const MAX_LAYER_ELEMENTS: usize = 1 << 40;

/// Bytes of a `config.json` (and of the other small JSON files of a checkpoint).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Bytes of a sharded checkpoint's `model.safetensors.index.json` (DeepSeek-V3's is ~9 MB).
pub const MAX_SHARD_INDEX_BYTES: u64 = 64 << 20;
/// Bytes of a safetensors JSON header (the `safetensors` crate itself stops at 100 MB).
pub const MAX_SAFETENSORS_HEADER_BYTES: usize = 64 << 20;
/// Tensors named in one safetensors header: parsing costs about 1 KB of memory per entry,
/// so this caps a header's parse near 250 MB; DeepSeek-V3 in one file would have ~92k.
pub const MAX_SAFETENSORS_TENSORS: usize = 1 << 18;
/// Bytes of a placement YAML file.
pub const MAX_PLACEMENT_BYTES: u64 = 32 << 20;
/// Nesting depth of a placement YAML document (a valid one has 3: mapping, mapping, list).
pub const MAX_YAML_DEPTH: usize = 32;
/// Bytes of a load JSON file (`{"load": [[...]]}`) or a previous plan.
pub const MAX_LOAD_FILE_BYTES: u64 = 64 << 20;

/// Refuses `value` of `field` above `max`, naming both.
pub fn check_max(field: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(MoeError::config(
            field,
            format!("{value} is above the limit of {max} (docs/LIMITS.md)"),
        ));
    }
    Ok(())
}

/// The product of `factors`, or an error naming `what` when it overflows `usize`.
pub fn checked_product(what: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| MoeError::config(what, format!("the size product {factors:?} overflows")))
}

/// Bytes of `elements` items of `item_bytes` each, refused past `isize::MAX` (the largest
/// allocation Rust can make) with an error naming `what`.
pub fn bytes_of(what: &str, elements: usize, item_bytes: usize) -> Result<usize> {
    elements
        .checked_mul(item_bytes)
        .filter(|&b| isize::try_from(b).is_ok())
        .ok_or_else(|| {
            MoeError::config(
                what,
                format!("{elements} elements of {item_bytes} bytes do not fit in memory"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_naming_the_field_and_products_do_not_wrap() {
        assert!(check_max("num_slots", MAX_SLOTS, MAX_SLOTS).is_ok());
        let e = check_max("num_slots", MAX_SLOTS + 1, MAX_SLOTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_slots") && e.contains("65537"), "{e}");
        assert_eq!(checked_product("x", &[3, 4, 5]).unwrap(), 60);
        let e = checked_product("weights", &[1 << 40, 1 << 40]).unwrap_err().to_string();
        assert!(e.contains("weights") && e.contains("overflows"), "{e}");
        assert_eq!(bytes_of("y", 10, 4).unwrap(), 40);
        assert!(bytes_of("y", usize::MAX / 2, 2).is_err());
        assert!(bytes_of("y", isize::MAX as usize, 1).is_ok());
    }
}
