//! Token permutation by local slot: a counting sort of the `(token, k)` selections that fall
//! on this rank's slots, so each slot's rows can be gathered into one contiguous GEMM input.
//!
//! Selections of slots outside `slot_start..slot_end` belong to other EP ranks and are
//! skipped. Within a slot, selections keep token order (the sort is stable), which makes the
//! CPU backend's output independent of thread scheduling.

use std::ops::Range;

use moe_core::{MoeError, Result};

use super::float_slice::FloatSlice;

/// Marks a selection whose slot is not on this rank (see [`SlotPermutation::row_of_pair`]).
pub const NOT_LOCAL: usize = usize::MAX;

/// The error for a slot id outside `0..num_slots`, naming the token and its selection.
pub fn invalid_slot_error(token: usize, selection: usize, id: i32, num_slots: usize) -> MoeError {
    MoeError::config(
        "token_selected_slots",
        format!("token {token}, selection {selection}: slot id {id} is not in 0..{num_slots}"),
    )
}

/// Selections of the local slots sorted by slot. Buffers are kept across
/// [`SlotPermutation::compute`] calls, so steady-state forwards do not allocate.
#[derive(Clone, Debug, Default)]
pub struct SlotPermutation {
    top_k: usize,
    /// `offsets[s]..offsets[s + 1]` are the rows of local slot `s`.
    offsets: Vec<usize>,
    /// Row -> flat selection index `token * top_k + k`.
    pairs: Vec<usize>,
    /// Flat selection index -> row, or [`NOT_LOCAL`].
    row_of_pair: Vec<usize>,
    /// Next free row per slot while placing (kept only to reuse its allocation).
    cursor: Vec<usize>,
}

impl SlotPermutation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorts the selections `slots` (`[N, top_k]` global slot ids, row-major) whose slot lies
    /// in `local` (a range of `0..num_slots`) by local slot.
    ///
    /// An id that is negative or `>= num_slots` is an error naming the token, even when
    /// another rank would have owned it: every rank must agree on what is valid.
    pub fn compute(&mut self, slots: &[i32], top_k: usize, num_slots: usize, local: Range<usize>) -> Result<()> {
        // `checked_rem` is `None` for top_k = 0, which is refused along with ragged rows.
        if slots.len().checked_rem(top_k) != Some(0) {
            return Err(MoeError::shape(
                "token_selected_slots",
                format!("[N, {top_k}]"),
                &[slots.len()],
            ));
        }
        if local.start > local.end || local.end > num_slots {
            return Err(MoeError::config(
                "slot range",
                format!("local slots {local:?} do not lie within 0..{num_slots}"),
            ));
        }
        let num_local = local.end - local.start;
        self.top_k = top_k;
        // Start empty so a failed call never leaves the previous call's rows behind.
        self.pairs.clear();
        self.row_of_pair.clear();

        // Pass 1: validate and count. offsets[s + 1] holds the count of slot s for now.
        self.offsets.clear();
        self.offsets.resize(num_local + 1, 0);
        for (p, &id) in slots.iter().enumerate() {
            let s = usize::try_from(id)
                .ok()
                .filter(|&s| s < num_slots)
                .ok_or_else(|| invalid_slot_error(p / top_k, p % top_k, id, num_slots))?;
            if local.contains(&s) {
                self.offsets[s - local.start + 1] += 1;
            }
        }
        // Pass 2: running sum, after which offsets[s] is the first row of slot s.
        for s in 0..num_local {
            self.offsets[s + 1] += self.offsets[s];
        }
        let rows = self.offsets[num_local];

        // Pass 3: place selections in token order; `cursor[s]` is the next free row of slot s.
        self.pairs.resize(rows, 0);
        self.row_of_pair.resize(slots.len(), NOT_LOCAL);
        self.cursor.clear();
        self.cursor.extend_from_slice(&self.offsets[..num_local]);
        for (p, &id) in slots.iter().enumerate() {
            // Pass 1 proved every id is in 0..num_slots, so the cast is lossless.
            let s = id as usize;
            if local.contains(&s) {
                let cur = &mut self.cursor[s - local.start];
                self.pairs[*cur] = p;
                self.row_of_pair[p] = *cur;
                *cur += 1;
            }
        }
        Ok(())
    }

    /// Rows of the permuted layout (selections on this rank).
    pub fn num_rows(&self) -> usize {
        self.pairs.len()
    }

    /// Local slot count of the last [`SlotPermutation::compute`].
    pub fn num_local_slots(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// `offsets()[s]..offsets()[s + 1]` are the rows of local slot `s`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Rows of local slot `s`.
    pub fn slot_rows(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// `(token, k)` of permuted row `row`.
    pub fn pair(&self, row: usize) -> (usize, usize) {
        let p = self.pairs[row];
        (p / self.top_k, p % self.top_k)
    }

    /// Iterator over the permuted `(token, k)` pairs, in row order.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pairs.iter().map(|&p| (p / self.top_k, p % self.top_k))
    }

    /// Flat selection index (`token * top_k + k`) -> permuted row, or [`NOT_LOCAL`].
    pub fn row_of_pair(&self) -> &[usize] {
        &self.row_of_pair
    }

    /// Widens the activations of rows `rows` into `out` (`[rows.len(), hidden]` f32), reading
    /// each row's token from `x` (`[N, hidden]`).
    pub fn gather_rows(&self, x: FloatSlice<'_>, hidden: usize, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        if rows.end > self.num_rows() {
            return Err(MoeError::shape(
                "gathered rows",
                format!("rows {rows:?}"),
                &[self.num_rows()],
            ));
        }
        if hidden == 0 {
            return Ok(());
        }
        let (need, have) = (rows.len() * hidden, out.len());
        let out = out
            .get_mut(..need)
            .ok_or_else(|| MoeError::shape("gather buffer", format!("{need} elements"), &[have]))?;
        for (dst, row) in out.chunks_exact_mut(hidden).zip(rows) {
            let (token, _) = self.pair(row);
            x.widen_into(token * hidden, dst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{DType, Tensor};

    #[test]
    fn sorts_local_selections_stably_and_skips_remote_ones() {
        // 4 tokens, k = 2, 6 global slots, this rank holds slots 2..5.
        let slots = [2, 0, 4, 2, 5, 3, 2, 4];
        let mut p = SlotPermutation::new();
        p.compute(&slots, 2, 6, 2..5).unwrap();
        // slot 2: (0,0) (1,1) (3,0); slot 3: (2,1); slot 4: (1,0) (3,1)
        assert_eq!(p.offsets(), &[0, 3, 4, 6]);
        let pairs: Vec<_> = p.pairs().collect();
        assert_eq!(pairs, vec![(0, 0), (1, 1), (3, 0), (2, 1), (1, 0), (3, 1)]);
        assert_eq!(p.row_of_pair(), &[0, NOT_LOCAL, 4, 1, NOT_LOCAL, 3, 2, 5]);
        assert_eq!(p.slot_rows(1), 3..4);
        assert_eq!(p.num_local_slots(), 3);
    }

    #[test]
    fn invalid_ids_name_the_token() {
        let mut p = SlotPermutation::new();
        let err = p.compute(&[0, 1, 1, -1], 2, 4, 0..4).unwrap_err().to_string();
        assert!(err.contains("token 1, selection 1: slot id -1"), "{err}");
        let err = p.compute(&[0, 4], 1, 4, 0..2).unwrap_err().to_string();
        assert!(err.contains("token 1, selection 0: slot id 4"), "{err}");
        assert!(p.compute(&[0, 1, 2], 2, 4, 0..4).is_err());
        assert!(p.compute(&[0], 1, 4, 2..5).is_err());
        assert_eq!(p.num_rows(), 0);
    }

    #[test]
    fn reuse_shrinks_and_grows() {
        let mut p = SlotPermutation::new();
        p.compute(&[1, 1, 0, 1], 1, 2, 0..2).unwrap();
        assert_eq!(p.num_rows(), 4);
        p.compute(&[1], 1, 2, 1..2).unwrap();
        assert_eq!(p.offsets(), &[0, 1]);
        assert_eq!(p.row_of_pair(), &[0]);
    }

    #[test]
    fn gathers_rows_in_permuted_order() {
        let x = Tensor::from_f32_as(DType::F16, vec![3, 2], &[0., 1., 10., 11., 20., 21.]).unwrap();
        let mut p = SlotPermutation::new();
        p.compute(&[1, 0, 1], 1, 2, 0..2).unwrap();
        let mut out = vec![0.0; 6];
        p.gather_rows(FloatSlice::from_tensor(&x, "x").unwrap(), 2, 0..3, &mut out)
            .unwrap();
        assert_eq!(out, vec![10., 11., 0., 1., 20., 21.]);
        assert!(
            p.gather_rows(FloatSlice::from_tensor(&x, "x").unwrap(), 2, 0..3, &mut out[..4])
                .is_err()
        );
        assert!(
            p.gather_rows(FloatSlice::from_tensor(&x, "x").unwrap(), 2, 2..4, &mut out)
                .is_err()
        );
    }
}
