//! Chunk arithmetic shared by the schedulers (TensorRT-LLM `split_chunk` and
//! `calculate_num_chunks`).

use moe_core::{MoeError, Result};

/// Splits `n` rows into `c` chunks, earlier chunks larger: `[q+1]*r + [q]*(c-r)`.
/// Zeros appear at the tail when `n < c`.
pub fn split_chunk(n: usize, c: usize) -> Vec<usize> {
    if c == 0 {
        return Vec::new();
    }
    let (q, r) = (n / c, n % c);
    (0..c).map(|i| q + usize::from(i < r)).collect()
}

/// Number of chunks for a call: `ceil(rows / moe_max_num_tokens)`, where rows is
/// `len(list) * max(list)` when attention-DP tokens travel through a communication strategy
/// (every rank must agree), else the single entry of the list. At least one chunk.
pub fn calculate_num_chunks(
    all_rank_num_tokens: &[usize],
    dp_with_comm: bool,
    moe_max_num_tokens: Option<usize>,
) -> Result<usize> {
    let rows = if dp_with_comm {
        all_rank_num_tokens.len() * all_rank_num_tokens.iter().copied().max().unwrap_or(0)
    } else {
        match all_rank_num_tokens {
            [n] => *n,
            other => {
                return Err(MoeError::config(
                    "all_rank_num_tokens",
                    format!(
                        "{} entries given, but without attention-DP communication there is one token list",
                        other.len()
                    ),
                ));
            }
        }
    };
    Ok(match moe_max_num_tokens {
        None => 1,
        Some(0) => return Err(MoeError::config("moe_max_num_tokens", "must be at least 1")),
        Some(m) => rows.div_ceil(m).max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_chunk_puts_the_remainder_first() {
        assert_eq!(split_chunk(10, 3), vec![4, 3, 3]);
        assert_eq!(split_chunk(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split_chunk(0, 2), vec![0, 0]);
        assert_eq!(split_chunk(7, 1), vec![7]);
    }

    #[test]
    fn num_chunks_follow_the_row_count() {
        assert_eq!(calculate_num_chunks(&[130], false, Some(16)).unwrap(), 9);
        assert_eq!(calculate_num_chunks(&[130], false, None).unwrap(), 1);
        assert_eq!(calculate_num_chunks(&[0], false, Some(16)).unwrap(), 1);
        // DP with comm: 3 ranks padded to the max (5) -> 15 rows.
        assert_eq!(calculate_num_chunks(&[5, 0, 2], true, Some(4)).unwrap(), 4);
        assert!(calculate_num_chunks(&[5, 2], false, Some(4)).is_err());
        assert!(calculate_num_chunks(&[5], false, Some(0)).is_err());
    }
}
