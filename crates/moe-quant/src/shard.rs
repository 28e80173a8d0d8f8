//! Tensor-parallel sharding of the intermediate dimension (core spec §6.3): a dimension of
//! size `dim` splits into slices of `ceil(dim / tp_size)` starting at `tp_rank * width`; the
//! last slice may be short (and a rank past the end gets an empty one). Destinations are
//! always `width` wide and the missing tail is zero, which contributes nothing to FC1, the
//! activations (all map 0 to 0) or FC2. Zero is also the zero of every quantized format here
//! (code 0 with any scale, or a zero scale), so packed codes and scales pad the same way.
//!
//! Tensors that hold one entry per block of elements (packed 4-bit codes: 2 per byte; block
//! and group scales) shard in those units ([`Shard::in_units`]); a shard that would split a
//! block is refused, naming the tensor.

use moe_core::{MoeError, Result};

/// One rank's slice of a dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// First index of the slice.
    pub start: usize,
    /// Indices actually present (`<= width`).
    pub len: usize,
    /// Slice width every rank allocates (`ceil(dim / tp_size)`).
    pub width: usize,
}

impl Shard {
    /// The slice of `dim` on `tp_rank` of `tp_size` (`tp_size >= 1`).
    pub fn of(dim: usize, tp_size: usize, tp_rank: usize) -> Shard {
        let width = dim.div_ceil(tp_size.max(1));
        let start = (tp_rank * width).min(dim);
        Shard {
            start,
            len: width.min(dim - start),
            width,
        }
    }

    /// This shard of a `dim`-element dimension, in units of `unit` elements, for a tensor that
    /// holds `dim.div_ceil(unit)` entries along it (one per block, group or packed byte). The
    /// shard must start on a unit boundary and end on one or at `dim`; otherwise a shape error
    /// names `what`, since a rank would get part of a block and its scale would be wrong.
    pub fn in_units(self, dim: usize, unit: usize, what: &str) -> Result<Shard> {
        let unit = unit.max(1);
        let width = self.width.div_ceil(unit);
        if self.len == 0 {
            return Ok(Shard {
                start: dim.div_ceil(unit),
                len: 0,
                width,
            });
        }
        let end = self.start + self.len;
        if !self.start.is_multiple_of(unit) || (!end.is_multiple_of(unit) && end != dim) {
            return Err(MoeError::shape(
                what,
                format!(
                    "a TP shard of whole {unit}-element blocks (this rank holds elements {}..{end} of {dim})",
                    self.start
                ),
                &[self.start, end],
            ));
        }
        let start = self.start / unit;
        Ok(Shard {
            start,
            len: end.div_ceil(unit) - start,
            width,
        })
    }
}

/// COLUMN sharding of a row-major `[rows, cols]` matrix: copies rows
/// `shard.start..shard.start + shard.len` into `dst` (`[shard.width, cols]`), zero tail.
pub fn copy_row_shard<T: Copy + Default>(src: &[T], cols: usize, shard: Shard, dst: &mut [T]) {
    let (a, b) = (shard.start * cols, (shard.start + shard.len) * cols);
    dst[..b - a].copy_from_slice(&src[a..b]);
    dst[b - a..shard.width * cols].fill(T::default());
}

/// ROW sharding of a row-major `[rows, cols]` matrix: copies columns
/// `shard.start..shard.start + shard.len` of every row into `dst` (`[rows, shard.width]`),
/// zero tail.
pub fn copy_col_shard<T: Copy + Default>(src: &[T], rows: usize, cols: usize, shard: Shard, dst: &mut [T]) {
    if shard.width == 0 {
        return;
    }
    for (r, out) in dst.chunks_exact_mut(shard.width).take(rows).enumerate() {
        let row = &src[r * cols + shard.start..r * cols + shard.start + shard.len];
        out[..shard.len].copy_from_slice(row);
        out[shard.len..].fill(T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_ceil_and_last_shard_is_short() {
        assert_eq!(
            Shard::of(8, 2, 1),
            Shard {
                start: 4,
                len: 4,
                width: 4
            }
        );
        assert_eq!(
            Shard::of(7, 2, 1),
            Shard {
                start: 4,
                len: 3,
                width: 4
            }
        );
        assert_eq!(
            Shard::of(2, 4, 3),
            Shard {
                start: 2,
                len: 0,
                width: 1
            }
        );
        assert_eq!(
            Shard::of(5, 1, 0),
            Shard {
                start: 0,
                len: 5,
                width: 5
            }
        );
    }

    #[test]
    fn row_and_column_copies() {
        // [3, 2] matrix 0 1 / 2 3 / 4 5
        let m = [0., 1., 2., 3., 4., 5.];
        let mut rows = [9.0; 4];
        copy_row_shard(&m, 2, Shard::of(3, 2, 1), &mut rows);
        assert_eq!(rows, [4., 5., 0., 0.]);
        let mut cols = [9.0; 3];
        copy_col_shard(&m, 3, 2, Shard::of(2, 2, 1), &mut cols);
        assert_eq!(cols, [1., 3., 5.]);
        // Bytes pad with 0 too.
        let mut b = [9u8; 4];
        copy_row_shard(&[1u8, 2, 3, 4, 5, 6], 2, Shard::of(3, 2, 1), &mut b);
        assert_eq!(b, [5, 6, 0, 0]);
    }

    #[test]
    fn unit_shards_keep_blocks_whole() {
        // I = 512 over tp 2, blocks of 128: rank 1 holds blocks 2..4.
        assert_eq!(
            Shard::of(512, 2, 1).in_units(512, 128, "t").unwrap(),
            Shard {
                start: 2,
                len: 2,
                width: 2
            }
        );
        // Partial edge block (FP8 block scales use ceil): I = 300, tp 1 -> 3 blocks.
        assert_eq!(
            Shard::of(300, 1, 0).in_units(300, 128, "t").unwrap(),
            Shard {
                start: 0,
                len: 3,
                width: 3
            }
        );
        // Packed nibbles: 2 per byte.
        assert_eq!(
            Shard::of(64, 2, 1).in_units(64, 2, "t").unwrap(),
            Shard {
                start: 16,
                len: 16,
                width: 16
            }
        );
        // I = 256 over tp 2 with 128-wide blocks is fine, with tp 4 (64 each) it splits blocks.
        for rank in 0..4 {
            let err = Shard::of(256, 4, rank)
                .in_units(256, 128, "3.w2.weight_scale_inv")
                .unwrap_err();
            assert!(err.to_string().contains("3.w2.weight_scale_inv"), "{err}");
        }
        // An empty shard past the end is fine whatever the alignment.
        assert_eq!(Shard::of(2, 4, 3).in_units(2, 16, "t").unwrap().len, 0);
    }
}
