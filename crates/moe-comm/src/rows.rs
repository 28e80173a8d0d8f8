//! Row arithmetic every process group shares: checking per-rank counts, splitting a tensor
//! into per-rank row blocks and summing equally shaped tensors in f32.

use moe_core::{MoeError, Result, Tensor};

/// Checks that `counts` holds one entry per rank of a world of `size`.
pub(crate) fn check_counts(counts: &[usize], size: usize, what: &str) -> Result<()> {
    if counts.len() != size {
        return Err(MoeError::config(
            what,
            format!("{} counts for a world of {size}", counts.len()),
        ));
    }
    Ok(())
}

/// Checks an all-gather's `counts` and that `local` holds this rank's `counts[rank]` rows.
pub(crate) fn check_gather_input(local: &Tensor, counts: &[usize], rank: usize, size: usize) -> Result<()> {
    check_counts(counts, size, "all_gather_v counts")?;
    if local.rows() != counts[rank] {
        return Err(MoeError::shape(
            "all_gather_v input",
            format!("{} rows", counts[rank]),
            local.shape(),
        ));
    }
    Ok(())
}

/// Checks that `t` holds exactly the rows `counts` splits it into.
pub(crate) fn check_split_rows(t: &Tensor, counts: &[usize]) -> Result<()> {
    let total: usize = counts.iter().sum();
    if total != t.rows() {
        return Err(MoeError::shape(
            "rows to split",
            format!("{total} rows (sum of counts {counts:?})"),
            t.shape(),
        ));
    }
    Ok(())
}

/// Splits `t` into consecutive row blocks of `counts[r]` rows.
pub fn split_rows_by_counts(t: &Tensor, counts: &[usize]) -> Result<Vec<Tensor>> {
    check_split_rows(t, counts)?;
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
