//! Two-sided all-to-all with variable counts: dispatch sends each token once to every
//! distinct rank that holds one of its slots (with all its slots and weights; the receiver's
//! backend skips slots it does not hold), combine sends the partial outputs back and sums
//! them per token. Moves `k`-times less data than all-gather when experts spread over ranks.

use std::sync::Arc;
use std::time::Duration;

use moe_core::{Communication, DType, Deadline, DispatchPayload, MoeError, ProcessGroup, Result, Tensor};

/// State a dispatch leaves for its combine.
struct Route {
    /// Local token index of every row sent, in send order.
    order: Vec<usize>,
    send_counts: Vec<usize>,
    recv_counts: Vec<usize>,
    local_rows: usize,
}

/// All-to-all dispatch/combine over a slot -> rank ownership table.
pub struct AllToAll {
    group: Arc<dyn ProcessGroup>,
    timeout: Duration,
    /// Owning rank of every global slot.
    slot_owner: Vec<usize>,
    /// Most (token, rank) rows one rank may send in a chunk (the exchange workspace).
    capacity_rows: usize,
    route: Option<Route>,
}

impl AllToAll {
    /// `slot_owner[s]` is the rank holding global slot `s`.
    pub fn new(group: Arc<dyn ProcessGroup>, timeout: Duration, slot_owner: Vec<usize>, capacity_rows: usize) -> Self {
        AllToAll {
            group,
            timeout,
            slot_owner,
            capacity_rows,
            route: None,
        }
    }

    fn take_rows(t: &Tensor, order: &[usize]) -> Result<Tensor> {
        let parts = order.iter().map(|&i| t.narrow_rows(i, 1)).collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            let mut shape = t.shape().to_vec();
            shape[0] = 0;
            return Ok(Tensor::zeros(t.dtype(), shape));
        }
        Tensor::concat_rows(&parts)
    }
}

impl Communication for AllToAll {
    fn name(&self) -> &'static str {
        "alltoall"
    }

    fn is_platform_supported(&self) -> bool {
        true
    }

    fn is_workload_feasible(&self, all_rank_num_tokens: &[usize], num_chunks: usize) -> bool {
        // Worst case a rank sends each of its chunk's tokens to every other rank.
        let max = all_rank_num_tokens.iter().copied().max().unwrap_or(0);
        max.div_ceil(num_chunks.max(1)) * self.group.size() <= self.capacity_rows
    }

    fn is_alltoall(&self) -> bool {
        true
    }

    fn dispatch(&mut self, p: DispatchPayload, list: &[usize], _: bool) -> Result<DispatchPayload> {
        let size = self.group.size();
        if list.len() != size {
            return Err(MoeError::config(
                "all_rank_num_tokens",
                format!("{} entries for {} ranks", list.len(), size),
            ));
        }
        let n = p.x.rows();
        let k = p.slots.row_len();
        let slots = p.slots.as_i32("dispatched slots")?;
        let mut per_rank: Vec<Vec<usize>> = vec![Vec::new(); size];
        for t in 0..n {
            let mut seen = vec![false; size];
            for &s in &slots[t * k..(t + 1) * k] {
                let owner = usize::try_from(s)
                    .ok()
                    .and_then(|s| self.slot_owner.get(s))
                    .copied()
                    .ok_or_else(|| {
                        MoeError::config(
                            "slots",
                            format!(
                                "token {t} names slot {s}, but there are {} slots",
                                self.slot_owner.len()
                            ),
                        )
                    })?;
                if !std::mem::replace(&mut seen[owner], true) {
                    per_rank[owner].push(t);
                }
            }
        }
        let send_counts: Vec<usize> = per_rank.iter().map(Vec::len).collect();
        let order: Vec<usize> = per_rank.concat();
        let deadline = Deadline::after(self.timeout);
        let counts_t = Tensor::from_i32(
            vec![size, 1],
            send_counts
                .iter()
                .map(|&c| i32::try_from(c).unwrap_or(i32::MAX))
                .collect(),
        )?;
        let recv = self
            .group
            .all_to_all_v(&counts_t, &vec![1; size], &vec![1; size], deadline)?;
        let recv_counts: Vec<usize> = recv
            .as_i32("received counts")?
            .iter()
            .map(|&c| c.max(0) as usize)
            .collect();
        let exchange = |t: &Tensor| -> Result<Tensor> {
            self.group
                .all_to_all_v(&Self::take_rows(t, &order)?, &send_counts, &recv_counts, deadline)
        };
        let out = DispatchPayload {
            x: exchange(&p.x)?,
            x_sf: p.x_sf.as_ref().map(&exchange).transpose()?,
            slots: exchange(&p.slots)?,
            scales: p.scales.as_ref().map(&exchange).transpose()?,
        };
        self.route = Some(Route {
            order,
            send_counts,
            recv_counts,
            local_rows: n,
        });
        Ok(out)
    }

    fn combine(&mut self, out: Tensor, _: usize) -> Result<Tensor> {
        let route = self
            .route
            .take()
            .ok_or_else(|| MoeError::lifecycle("all-to-all combine without a dispatch"))?;
        let deadline = Deadline::after(self.timeout);
        let back = self
            .group
            .all_to_all_v(&out, &route.recv_counts, &route.send_counts, deadline)?;
        let h = back.row_len();
        let parts = back.to_f32_vec("combined rows")?;
        let mut acc = vec![0.0f32; route.local_rows * h];
        for (row, &t) in route.order.iter().enumerate() {
            for (a, b) in acc[t * h..(t + 1) * h].iter_mut().zip(&parts[row * h..(row + 1) * h]) {
                *a += b;
            }
        }
        let dtype = if out.dtype().is_float_activation() {
            out.dtype()
        } else {
            DType::F32
        };
        Tensor::from_f32_as(dtype, vec![route.local_rows, h], &acc)
    }

    fn destroy(&mut self) -> Result<()> {
        self.group.barrier(Deadline::after(self.timeout))
    }
}
