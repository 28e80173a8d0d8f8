//! AllGather + ReduceScatter (always feasible): dispatch gathers every rank's tokens to every
//! rank, each rank computes its slots' share for all of them, and combine sums the shares and
//! returns each rank its own rows. Without attention-DP every rank already holds the same
//! tokens, so dispatch is the identity and combine an all-reduce.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use moe_core::{Communication, Deadline, DispatchPayload, MoeError, ProcessGroup, Result, Tensor};

/// The always-feasible strategy, and the fallback of the all-to-all ones.
pub struct AllGatherReduceScatter {
    group: Arc<dyn ProcessGroup>,
    timeout: Duration,
    /// Rows per rank of the last dispatch (`None`: replicated tokens, combine all-reduces).
    counts: Option<Vec<usize>>,
}

impl AllGatherReduceScatter {
    pub fn new(group: Arc<dyn ProcessGroup>, timeout: Duration) -> Self {
        AllGatherReduceScatter {
            group,
            timeout,
            counts: None,
        }
    }
}

impl Communication for AllGatherReduceScatter {
    fn name(&self) -> &'static str {
        "allgather"
    }

    fn is_platform_supported(&self) -> bool {
        true
    }

    fn is_workload_feasible(&self, _: &[usize], _: usize) -> bool {
        true
    }

    fn is_alltoall(&self) -> bool {
        false
    }

    fn dispatch<'a>(
        &mut self,
        p: DispatchPayload<'a>,
        list: &[usize],
        use_dp_padding: bool,
    ) -> Result<DispatchPayload<'a>> {
        self.counts = gather_counts(self.group.as_ref(), list, use_dp_padding)?;
        let Some(counts) = self.counts.clone() else {
            return Ok(p);
        };
        // x, its scale factors, the slots and the routing weights in one collective.
        let mut fields: Vec<&Tensor> = vec![&*p.x, &p.slots];
        fields.extend(p.scales.as_ref());
        fields.extend(p.x_sf.as_ref());
        let mut gathered = self
            .group
            .all_gather_v_many(&fields, &counts, Deadline::after(self.timeout))?
            .into_iter();
        let mut next = || {
            gathered
                .next()
                .ok_or_else(|| MoeError::lifecycle("allgather: a gathered field is missing"))
        };
        Ok(DispatchPayload {
            x: Cow::Owned(next()?),
            slots: next()?,
            scales: p.scales.as_ref().map(|_| next()).transpose()?,
            x_sf: p.x_sf.as_ref().map(|_| next()).transpose()?,
        })
    }

    fn combine(&mut self, out: Tensor, _: usize) -> Result<Tensor> {
        reduce_to_owners(
            self.group.as_ref(),
            self.counts.take(),
            &out,
            Deadline::after(self.timeout),
        )
    }

    fn destroy(&mut self) -> Result<()> {
        self.group.barrier(Deadline::after(self.timeout))
    }
}

/// Rows every rank contributes to a gather-style dispatch: `None` for replicated tokens (a
/// one-entry list: every rank already holds them), else the list, padded to its maximum when
/// the caller pads.
pub(crate) fn gather_counts(
    group: &dyn ProcessGroup,
    list: &[usize],
    use_dp_padding: bool,
) -> Result<Option<Vec<usize>>> {
    if list.len() == 1 {
        return Ok(None);
    }
    if list.len() != group.size() {
        return Err(MoeError::config(
            "all_rank_num_tokens",
            format!("{} entries for {} ranks", list.len(), group.size()),
        ));
    }
    let max = list.iter().copied().max().unwrap_or(0);
    Ok(Some(if use_dp_padding {
        vec![max; list.len()]
    } else {
        list.to_vec()
    }))
}

/// Combine of a gather-style dispatch: sum every rank's partial rows and hand each rank its
/// own (reduce-scatter), or all-reduce when the tokens were replicated.
pub(crate) fn reduce_to_owners(
    group: &dyn ProcessGroup,
    counts: Option<Vec<usize>>,
    out: &Tensor,
    deadline: Deadline,
) -> Result<Tensor> {
    match counts {
        Some(counts) => group.reduce_scatter_v(out, &counts, deadline),
        None => group.all_reduce_sum(out, deadline),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InProcessGroup;

    /// Tokens every rank already holds (a one-entry list) are not sent: the strategy hands
    /// back the very activations it was lent, so the dispatch copies nothing.
    #[test]
    fn replicated_tokens_come_back_as_lent() {
        let group = InProcessGroup::world(2).remove(0);
        let mut s = AllGatherReduceScatter::new(Arc::new(group), Duration::from_secs(1));
        let x = Tensor::from_f32(vec![2, 3], vec![1.0; 6]).unwrap();
        let payload = DispatchPayload {
            x: Cow::Borrowed(&x),
            x_sf: None,
            slots: Tensor::from_i32(vec![2, 1], vec![0, 1]).unwrap(),
            scales: None,
        };
        let d = s.dispatch(payload, &[2], false).unwrap();
        assert!(matches!(d.x, Cow::Borrowed(lent) if std::ptr::eq(lent, &x)));
    }
}
