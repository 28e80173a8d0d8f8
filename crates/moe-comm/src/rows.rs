//! Row arithmetic every process group shares: splitting a tensor into per-rank row blocks
//! and summing equally shaped tensors in f32.

use moe_core::{MoeError, Result, Tensor};

/// Splits `t` into consecutive row blocks of `counts[r]` rows.
pub fn split_rows_by_counts(t: &Tensor, counts: &[usize]) -> Result<Vec<Tensor>> {
    let total: usize = counts.iter().sum();
    if total != t.rows() {
        return Err(MoeError::shape(
            "rows to split",
            format!("{total} rows (sum of counts {counts:?})"),
            t.shape(),
        ));
    }
    let mut start = 0;
    counts
        .iter()
        .map(|&n| {
            let part = t.narrow_rows(start, n);
            start += n;
            part
        })
        .collect()
}

/// Element-wise sum of equally shaped float tensors, accumulated in f32 in rank order (so
/// every rank computes bit-identical sums), returned in the first tensor's dtype.
pub fn sum_tensors(parts: &[&Tensor]) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| MoeError::shape("sum", "at least one tensor", &[]))?;
    let mut acc = first.to_f32_vec("sum operand")?;
    for p in &parts[1..] {
        if p.shape() != first.shape() {
            return Err(MoeError::shape(
                "sum operand",
                format!("{:?}", first.shape()),
                p.shape(),
            ));
        }
        for (a, b) in acc.iter_mut().zip(p.to_f32_vec("sum operand")?) {
            *a += b;
        }
    }
    Tensor::from_f32_as(first.dtype(), first.shape().to_vec(), &acc)
}
