//! [`AllToAllRoute`]: the all-to-all routing of one dispatch as [`alltoall_route`] builds it on
//! the device (the same type in every build; without the `cuda` feature it is never built).
//!
//! [`alltoall_route`]: crate::cuda::alltoall_route

use moe_core::{MoeError, Result, Tensor};

use crate::cuda::CudaDevice;

/// Most ranks the device routing takes (a token's destinations are the bits of a 64-bit mask).
pub const ALLTOALL_ROUTE_MAX_RANKS: usize = 64;

/// Where a dispatch's rows go, on the payload's device.
///
/// `index` (i32) holds, for `m` rows sent: the token of every sent row at `[0, m)`, grouped by
/// destination rank in rank order, tokens ascending within a rank; at [`Self::offsets_at`] the
/// `tokens + 1` CSR offsets of each token's rows; at [`Self::rows_at`] each token's row numbers
/// in send order, ascending (offsets count from there). `head` (i32 `[1, world + 2]`) holds the
/// rows sent to each rank, then 1 + the first token that names a slot outside the owner table
/// and that slot (`0, 0` when all are valid).
pub struct AllToAllRoute {
    pub index: Tensor,
    pub head: Tensor,
    /// Capacity of the row lists ([`Self::capacity`]).
    pub max_rows: usize,
    pub tokens: usize,
}

/// A dispatch's counts as every rank reported them: row `r` of the all-gathered `head`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCounts {
    /// Rows this rank sends to each rank.
    pub send: Vec<usize>,
    /// Rows this rank receives from each rank.
    pub recv: Vec<usize>,
}

impl AllToAllRoute {
    /// Most rows `tokens` tokens of `k` slots send over `world` ranks (each token once per
    /// distinct rank).
    pub fn capacity(tokens: usize, k: usize, world: usize) -> usize {
        tokens * world.min(k)
    }

    /// A routing built on the host, uploaded to `dev` in this layout (worlds past the device
    /// kernel's): `order` the token of every sent row, `offsets`/`rows` each token's rows (CSR),
    /// `head` the `[1, world + 2]` i32 head, `k` slots per token.
    pub fn upload(
        dev: &CudaDevice,
        order: &[usize],
        offsets: &[usize],
        rows: &[usize],
        head: &Tensor,
        k: usize,
    ) -> Result<AllToAllRoute> {
        let tokens = offsets.len().saturating_sub(1);
        let max_rows = Self::capacity(tokens, k, head.row_len().saturating_sub(2));
        let mut all = vec![0i32; 2 * max_rows + tokens + 1];
        let at = [(0, order), (max_rows, offsets), (max_rows + tokens + 1, rows)];
        for (start, values) in at {
            for (slot, &v) in all[start..start + values.len()].iter_mut().zip(values) {
                *slot =
                    i32::try_from(v).map_err(|_| MoeError::config("alltoall routing", format!("{v} exceeds i32")))?;
            }
        }
        Ok(AllToAllRoute {
            index: dev.upload(&Tensor::from_i32(vec![all.len()], all)?)?,
            head: dev.upload(head)?,
            max_rows,
            tokens,
        })
    }

    pub fn offsets_at(&self) -> usize {
        self.max_rows
    }

    pub fn rows_at(&self) -> usize {
        self.max_rows + self.tokens + 1
    }

    /// Reads every rank's `head` (`heads`: `world` rows of `world + 2` i32, rank order) for
    /// `rank`: its send and receive counts, or the first rank whose tokens name a slot outside
    /// the `num_slots`-entry owner table (every rank sees it, so all refuse the dispatch alike).
    pub fn counts(heads: &[i32], rank: usize, world: usize, num_slots: usize) -> Result<RouteCounts> {
        let width = world + 2;
        if heads.len() != world * width || rank >= world {
            return Err(MoeError::shape(
                "all-to-all routing heads",
                format!("{world} rows of {width}"),
                &[heads.len()],
            ));
        }
        let row = |r: usize| &heads[r * width..(r + 1) * width];
        for r in 0..world {
            let h = row(r);
            if h[world] != 0 {
                return Err(MoeError::config(
                    "slots",
                    format!(
                        "rank {r}: token {} names slot {}, but there are {num_slots} slots",
                        i64::from(h[world]) - 1,
                        h[world + 1]
                    ),
                ));
            }
        }
        let count = |v: i32, what: &str| {
            usize::try_from(v).map_err(|_| MoeError::config("all-to-all routing heads", format!("{what}: {v}")))
        };
        let send = row(rank)[..world]
            .iter()
            .map(|&v| count(v, "negative send count"))
            .collect::<Result<_>>()?;
        let recv = (0..world)
            .map(|r| count(row(r)[rank], "negative receive count"))
            .collect::<Result<_>>()?;
        Ok(RouteCounts { send, recv })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_the_own_row_and_the_own_column() {
        // 3 ranks: head r = [sent to 0, 1, 2, bad, slot].
        let heads = [5, 1, 2, 0, 0, 3, 4, 0, 0, 0, 7, 8, 9, 0, 0];
        let c = AllToAllRoute::counts(&heads, 1, 3, 12).unwrap();
        assert_eq!(c.send, vec![3, 4, 0]);
        assert_eq!(c.recv, vec![1, 4, 8]);
    }

    #[test]
    fn a_bad_slot_on_any_rank_fails_every_rank_naming_it() {
        let heads = [1, 1, 0, 0, 2, 0, 5, 77];
        for rank in 0..2 {
            let err = AllToAllRoute::counts(&heads, rank, 2, 8).unwrap_err().to_string();
            assert!(
                err.contains("rank 1: token 4 names slot 77, but there are 8 slots"),
                "{err}"
            );
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(AllToAllRoute::counts(&[1, 2, 3], 0, 2, 4).is_err());
        assert!(AllToAllRoute::counts(&[-1, 0, 0, 0, 0, 0, 0, 0], 0, 2, 4).is_err());
    }
}
