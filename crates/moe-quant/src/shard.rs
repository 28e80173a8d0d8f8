//! Tensor-parallel sharding of the intermediate dimension (core spec §6.3): a dimension of
//! size `dim` splits into slices of `ceil(dim / tp_size)` starting at `tp_rank * width`; the
//! last slice may be short (and a rank past the end gets an empty one). Destinations are
//! always `width` wide and the missing tail is zero, which contributes nothing to FC1, the
//! activations (all map 0 to 0) or FC2.

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
        Shard { start, len: width.min(dim - start), width }
    }
}

/// COLUMN sharding of a row-major `[rows, cols]` matrix: copies rows
/// `shard.start..shard.start + shard.len` into `dst` (`[shard.width, cols]`), zero tail.
pub fn copy_row_shard(src: &[f32], cols: usize, shard: Shard, dst: &mut [f32]) {
    let (a, b) = (shard.start * cols, (shard.start + shard.len) * cols);
    dst[..b - a].copy_from_slice(&src[a..b]);
    dst[b - a..shard.width * cols].fill(0.0);
}

/// ROW sharding of a row-major `[rows, cols]` matrix: copies columns
/// `shard.start..shard.start + shard.len` of every row into `dst` (`[rows, shard.width]`),
/// zero tail.
pub fn copy_col_shard(src: &[f32], rows: usize, cols: usize, shard: Shard, dst: &mut [f32]) {
    if shard.width == 0 {
        return;
    }
    for (r, out) in dst.chunks_exact_mut(shard.width).take(rows).enumerate() {
        let row = &src[r * cols + shard.start..r * cols + shard.start + shard.len];
        out[..shard.len].copy_from_slice(row);
        out[shard.len..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_ceil_and_last_shard_is_short() {
        assert_eq!(Shard::of(8, 2, 1), Shard { start: 4, len: 4, width: 4 });
        assert_eq!(Shard::of(7, 2, 1), Shard { start: 4, len: 3, width: 4 });
        assert_eq!(Shard::of(2, 4, 3), Shard { start: 2, len: 0, width: 1 });
        assert_eq!(Shard::of(5, 1, 0), Shard { start: 0, len: 5, width: 5 });
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
    }
}
