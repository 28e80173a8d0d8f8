//! Deterministic top-k selection shared by every routing method.
//!
//! Kernels and PyTorch break ties in an unspecified order; the host reference fixes one order
//! (larger value first, equal values by lower index) so that routing is reproducible and tests
//! can state exact ids. The selector keeps a sorted buffer of at most `k` entries and is
//! reused across rows, so a row costs no allocation and `O(E)` comparisons in the common case
//! (`O(E·k)` worst case, which for `k ≤ 32` beats a full sort of 256-512 experts).

/// A reusable top-k buffer: `(value, index)` pairs sorted by value descending, ties by index
/// ascending.
#[derive(Debug)]
pub(super) struct TopK {
    k: usize,
    entries: Vec<(f32, usize)>,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        TopK {
            k,
            // Room for the one entry `push` inserts before truncating; a top-0 (the unused
            // group stage of the ungrouped methods) never inserts, so it allocates nothing.
            entries: if k == 0 { Vec::new() } else { Vec::with_capacity(k + 1) },
        }
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Offers one candidate. Callers offer candidates in ascending `index` order: an equal
    /// value then never displaces an earlier (lower) index, which is what makes ties go to the
    /// lower index without comparing indices. Values must not be NaN (the callers refuse NaN
    /// logits and derive only NaN-free scores from the rest).
    #[inline]
    pub(super) fn push(&mut self, value: f32, index: usize) {
        let len = self.entries.len();
        if len == self.k {
            match self.entries.last() {
                Some(&(last, _)) if value > last => {}
                _ => return,
            }
        }
        let mut pos = len;
        while pos > 0 && value > self.entries[pos - 1].0 {
            pos -= 1;
        }
        self.entries.insert(pos, (value, index));
        self.entries.truncate(self.k);
    }

    /// Selects the top-k of a whole row (indices are positions in `row`).
    pub(super) fn select(&mut self, row: &[f32]) -> &[(f32, usize)] {
        self.clear();
        for (j, &v) in row.iter().enumerate() {
            self.push(v, j);
        }
        &self.entries
    }

    /// The selection so far, best first.
    pub(super) fn entries(&self) -> &[(f32, usize)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    #[test]
    fn sorted_descending_with_ties_to_lower_index() {
        let mut t = TopK::new(3);
        let got: Vec<usize> = t.select(&[1.0, 5.0, 3.0, 5.0, 3.0, 0.0]).iter().map(|e| e.1).collect();
        // 5.0 at 1 and 3 (lower first), then the first 3.0 (index 2, not 4).
        assert_eq!(got, vec![1, 3, 2]);
    }

    #[test]
    fn neg_infinity_is_a_value_like_any_other() {
        let mut t = TopK::new(2);
        let got: Vec<(f32, usize)> = t.select(&[f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY]).to_vec();
        assert_eq!(got, vec![(-1.0, 1), (f32::NEG_INFINITY, 0)]);
    }

    #[test]
    fn k_equal_to_len_is_a_full_sort() {
        let mut t = TopK::new(4);
        let got: Vec<usize> = t.select(&[0.5, -2.0, 7.0, 0.5]).iter().map(|e| e.1).collect();
        assert_eq!(got, vec![2, 0, 3, 1]);
    }
}
