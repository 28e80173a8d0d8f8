//! Stage `collectives`: every collective of the group against host-computed expectations
//! (uneven and empty counts, odd row widths, host and device inputs; sums bit-identical to the
//! host's f32-in-rank-order sums).

use moe_comm::{NcclGroup, sum_tensors};
use moe_core::{DType, ProcessGroup, Result, Tensor};

use crate::Opts;
use crate::data::{Rng, random, same, soon};

pub(crate) fn check_collectives(g: &NcclGroup, o: &Opts, dtype: DType) -> Result<Vec<String>> {
    let (r, p) = (g.rank(), g.size());
    let dev = g.device();
    let mut bad = Vec::new();
    let tag = if dtype == DType::F32 { 100 } else { 200 };
    let mk = |s: usize, rows: usize, cols: usize, purpose: u64| {
        random(dtype, rows, cols, &mut Rng::new(o.seed, s, tag + purpose))
    };

    // Uneven counts with an empty rank, odd row width: grouped broadcasts.
    let counts: Vec<usize> = (0..p).map(|s| if s == 1 { 0 } else { 3 + 2 * s }).collect();
    let got = g.all_gather_v(&dev.upload(&mk(r, counts[r], 5, 1)?)?, &counts, soon())?;
    let want = Tensor::concat_rows(&(0..p).map(|s| mk(s, counts[s], 5, 1)).collect::<Result<Vec<_>>>()?)?;
    same(&mut bad, &format!("{dtype} all_gather_v uneven"), &got, &want)?;
    // Equal counts, wide rows: ncclAllGather.
    let eq = vec![16; p];
    let got = g.all_gather_v(&dev.upload(&mk(r, 16, 7168, 2)?)?, &eq, soon())?;
    let want = Tensor::concat_rows(&(0..p).map(|s| mk(s, 16, 7168, 2)).collect::<Result<Vec<_>>>()?)?;
    same(&mut bad, &format!("{dtype} all_gather_v equal"), &got, &want)?;

    // Reduce-scatter: rank r receives the f32-in-rank-order sum of every rank's block r.
    let total: usize = counts.iter().sum();
    let fulls = (0..p).map(|s| mk(s, total, 33, 3)).collect::<Result<Vec<_>>>()?;
    let got = g.reduce_scatter_v(&dev.upload(&fulls[r])?, &counts, soon())?;
    let start: usize = counts[..r].iter().sum();
    let blocks = fulls
        .iter()
        .map(|f| f.narrow_rows(start, counts[r]))
        .collect::<Result<Vec<_>>>()?;
    let want = sum_tensors(&blocks.iter().collect::<Vec<_>>())?;
    same(&mut bad, &format!("{dtype} reduce_scatter_v"), &got, &want)?;

    // All-to-all with some empty pairs: rank s sends c(s, d) rows to rank d.
    let c = |s: usize, d: usize| (s * 7 + d * 3 + 1) % 5;
    let sends = (0..p)
        .map(|s| mk(s, (0..p).map(|d| c(s, d)).sum(), 7, 4))
        .collect::<Result<Vec<_>>>()?;
    let send_counts: Vec<usize> = (0..p).map(|d| c(r, d)).collect();
    let recv_counts: Vec<usize> = (0..p).map(|s| c(s, r)).collect();
    let want = Tensor::concat_rows(
        &(0..p)
            .map(|s| sends[s].narrow_rows((0..r).map(|d| c(s, d)).sum(), c(s, r)))
            .collect::<Result<Vec<_>>>()?,
    )?;
    let got = g.all_to_all_v(&dev.upload(&sends[r])?, &send_counts, &recv_counts, soon())?;
    same(&mut bad, &format!("{dtype} all_to_all_v"), &got, &want)?;
    // The same from host tensors: uploaded, exchanged, downloaded.
    let got = g.all_to_all_v(&sends[r], &send_counts, &recv_counts, soon())?;
    if !got.is_host() {
        bad.push(format!(
            "{dtype} all_to_all_v of a host tensor returned a device tensor"
        ));
    }
    same(&mut bad, &format!("{dtype} all_to_all_v (host input)"), &got, &want)?;

    // All-reduce of an element count the world does not divide.
    let xs = (0..p).map(|s| mk(s, 7, 143, 5)).collect::<Result<Vec<_>>>()?;
    let got = g.all_reduce_sum(&dev.upload(&xs[r])?, soon())?;
    let want = sum_tensors(&xs.iter().collect::<Vec<_>>())?;
    same(&mut bad, &format!("{dtype} all_reduce_sum"), &got, &want)?;

    let values = g.all_gather_usize(r * 1000 + 7, soon())?;
    if values != (0..p).map(|s| s * 1000 + 7).collect::<Vec<_>>() {
        bad.push(format!("all_gather_usize returned {values:?}"));
    }
    g.barrier(soon())?;
    Ok(bad)
}
