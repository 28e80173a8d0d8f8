//! Finalize: the weighted sum of each token's expert output rows, back in token order
//! (`out[t] = sum_k w[t, k] * rows[row_of(t, k)]`, weight `None` = 1).
//!
//! This is the scatter-add of the permuted rows written as a gather per token: every token's
//! output row is owned by one worker, so the sum needs no atomics or locks and its order
//! (k ascending) does not depend on scheduling — outputs are bit-for-bit reproducible.

use moe_core::{MoeError, Result};
use rayon::prelude::*;

use super::permute::NOT_LOCAL;

/// Output rows handed to one worker at least, so tiny batches do not pay for task overhead.
const MIN_TOKENS_PER_TASK: usize = 8;

/// Writes `out` (`[N, hidden]`): for each token `t`, the sum over its selections `j` with
/// `row_of_pair[t * top_k + j] != NOT_LOCAL` of `weights[t * top_k + j]` (1 when `None`)
/// times row `row_of_pair[..]` of `rows` (`[R, hidden]`). Tokens without a local selection
/// get zeros.
pub fn weighted_sum_rows(
    out: &mut [f32],
    hidden: usize,
    top_k: usize,
    row_of_pair: &[usize],
    rows: &[f32],
    weights: Option<&[f32]>,
) -> Result<()> {
    let n = row_of_pair.len().checked_div(top_k).unwrap_or(0);
    if out.len() != n * hidden || weights.is_some_and(|w| w.len() != row_of_pair.len()) {
        return Err(MoeError::shape(
            "finalize buffers",
            format!("[{n}, {hidden}] output and [{n}, {top_k}] weights"),
            &[out.len(), weights.map_or(0, <[f32]>::len)],
        ));
    }
    let num_rows = rows.len().checked_div(hidden).unwrap_or(0);
    if let Some(&bad) = row_of_pair.iter().find(|&&r| r != NOT_LOCAL && r >= num_rows) {
        return Err(MoeError::shape(
            "finalize rows",
            format!("row {bad} within {num_rows} rows"),
            &[rows.len()],
        ));
    }
    if hidden == 0 {
        return Ok(());
    }
    out.par_chunks_mut(hidden)
        .with_min_len(MIN_TOKENS_PER_TASK)
        .enumerate()
        .for_each(|(t, o)| {
            o.fill(0.0);
            for j in 0..top_k {
                let p = t * top_k + j;
                let r = row_of_pair[p];
                if r == NOT_LOCAL {
                    continue;
                }
                let w = weights.map_or(1.0, |w| w[p]);
                let src = &rows[r * hidden..(r + 1) * hidden];
                for (d, &s) in o.iter_mut().zip(src) {
                    *d += w * s;
                }
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_local_rows_with_weights() {
        // 2 tokens, k = 2, hidden = 2; token 0 -> rows 1 and 0, token 1 -> remote + row 2.
        let rows = [1., 2., 10., 20., 100., 200.];
        let map = [1, 0, NOT_LOCAL, 2];
        let mut out = [f32::NAN; 4];
        weighted_sum_rows(&mut out, 2, 2, &map, &rows, Some(&[0.5, 2.0, 9.0, 0.25])).unwrap();
        assert_eq!(out, [0.5 * 10. + 2. * 1., 0.5 * 20. + 2. * 2., 25., 50.]);
        weighted_sum_rows(&mut out, 2, 2, &map, &rows, None).unwrap();
        assert_eq!(out, [11., 22., 100., 200.]);
    }

    #[test]
    fn rejects_inconsistent_buffers() {
        let mut out = [0.0; 2];
        assert!(weighted_sum_rows(&mut out, 2, 1, &[3], &[0.0; 4], None).is_err());
        assert!(weighted_sum_rows(&mut out, 2, 1, &[0], &[0.0; 4], Some(&[1.0, 2.0])).is_err());
    }
}
