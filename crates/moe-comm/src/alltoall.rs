//! Two-sided all-to-all with variable counts: dispatch sends each token once to every
//! distinct rank that holds one of its slots (with all its slots and weights; the receiver's
//! backend skips slots it does not hold), combine sends the partial outputs back and sums
//! them per token. Moves `k`-times less data than all-gather when experts spread over ranks.
//!
//! The routing (which rows go where, and the per-token sums of combine) is computed on the host
//! from the slot ids (downloaded when they live on a device; NCCL needs host-side counts
//! anyway). Host payloads are gathered and summed on the host (`ops::gather_rows`,
//! `ops::segment_sum_rows`). Device payloads upload the whole routing once per dispatch (send
//! order, and the CSR listing of each token's returned rows for combine) as one i32 index,
//! gather `x` by it and pack the other fields (slots, scales, scale factors) into one byte row
//! by it (`gather_rows_indexed`, `gather_pack_rows`), queued before the counts exchange so the
//! device gathers while the host waits for the counts; a dispatch is then two exchanges after
//! the counts; combine sums by the same index (`segment_sum_rows_indexed`). Same rows, same
//! sums in the same order: bit-identical to the host path. `AllToAll::set_profile` records the
//! wall time of every phase (benchmarks).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moe_core::{Communication, DType, Deadline, DispatchPayload, MoeError, ProcessGroup, Result, Tensor};
use moe_kernels::cuda::{self, CudaStorage, download};
use moe_kernels::ops;

/// State a dispatch leaves for its combine.
struct Route {
    /// Local token index of every row sent, in send order.
    order: Vec<usize>,
    send_counts: Vec<usize>,
    recv_counts: Vec<usize>,
    local_rows: usize,
    /// Device payloads: `[order | offsets | rows]` of `rows_by_token` on the payload's device.
    index: Option<Tensor>,
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
    /// Phase timings (see [`AllToAll::set_profile`]), `None` when not profiling.
    profile: Option<Profile>,
}

/// Wall time of each phase of the last dispatch and combine: the device is synchronised at
/// every phase boundary (device payloads), so each phase includes its device work.
struct Profile {
    last: Instant,
    phases: Vec<(&'static str, f64)>,
}

impl Profile {
    /// Ends phase `name` (after waiting for `sync`'s device when given).
    fn mark(p: &mut Option<Profile>, name: &'static str, sync: Option<&Tensor>) -> Result<()> {
        let Some(p) = p else { return Ok(()) };
        if let Some(t) = sync.filter(|t| !t.is_host()) {
            CudaStorage::of(t, "profiled tensor")?.device().synchronize()?;
        }
        let now = Instant::now();
        p.phases.push((name, (now - p.last).as_secs_f64() * 1e3));
        p.last = now;
        Ok(())
    }

    fn start(p: &mut Option<Profile>) {
        if let Some(p) = p {
            p.last = Instant::now();
        }
    }
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
            profile: None,
        }
    }

    /// Profiling (benchmarks only): every dispatch and combine records the wall time (ms) of
    /// its phases, synchronising the device at each boundary, which makes them slower.
    /// Results are unchanged.
    pub fn set_profile(&mut self, on: bool) {
        self.profile = on.then(|| Profile {
            last: Instant::now(),
            phases: Vec::new(),
        });
    }

    /// The phases recorded since the last call (name, ms), in order.
    pub fn take_profile(&mut self) -> Vec<(&'static str, f64)> {
        self.profile
            .as_mut()
            .map(|p| std::mem::take(&mut p.phases))
            .unwrap_or_default()
    }

    /// The slot ids as host values (downloaded when they live on a device).
    fn host_slots(slots: &Tensor) -> Result<Cow<'_, [i32]>> {
        if slots.is_host() {
            return slots.as_i32("dispatched slots").map(Cow::Borrowed);
        }
        Ok(Cow::Owned(download(slots)?.as_i32("dispatched slots")?.to_vec()))
    }
}

/// Each local token's rows in the combined buffer, grouped by token in ascending row order
/// (CSR: `offsets[t]..offsets[t + 1]` index `rows`), so the per-token sums add in the order
/// the rows arrive.
fn rows_by_token(order: &[usize], tokens: usize) -> (Vec<usize>, Vec<usize>) {
    let mut offsets = vec![0usize; tokens + 1];
    for &t in order {
        offsets[t + 1] += 1;
    }
    for t in 0..tokens {
        offsets[t + 1] += offsets[t];
    }
    let mut next = offsets.clone();
    let mut rows = vec![0usize; order.len()];
    for (row, &t) in order.iter().enumerate() {
        rows[next[t]] = row;
        next[t] += 1;
    }
    (offsets, rows)
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
        Profile::start(&mut self.profile);
        let slots = Self::host_slots(&p.slots)?;
        Profile::mark(&mut self.profile, "slots_download", None)?;
        let mut per_rank: Vec<Vec<usize>> = vec![Vec::with_capacity(n); size];
        // `stamp[r] == t + 1`: token t already goes to rank r.
        let mut stamp = vec![0usize; size];
        for t in 0..n {
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
                if stamp[owner] != t + 1 {
                    stamp[owner] = t + 1;
                    per_rank[owner].push(t);
                }
            }
        }
        let send_counts: Vec<usize> = per_rank.iter().map(Vec::len).collect();
        let order: Vec<usize> = per_rank.concat();
        // Device payloads: the whole routing goes up once, before the counts exchange.
        let index = if p.x.is_host() {
            None
        } else {
            let (offsets, rows) = rows_by_token(&order, n);
            let all: Vec<i32> = order
                .iter()
                .chain(&offsets)
                .chain(&rows)
                .map(|&v| i32::try_from(v).map_err(|_| MoeError::config("alltoall rows", format!("{v} exceeds i32"))))
                .collect::<Result<_>>()?;
            let dev = CudaStorage::of(&p.x, "dispatched x")?.device();
            Some(dev.upload(&Tensor::from_i32(vec![all.len()], all)?)?)
        };
        Profile::mark(&mut self.profile, "route_and_upload", index.as_ref())?;
        let m = order.len();
        // Device payloads: the send rows are gathered before the counts exchange, so the
        // device gathers while the host waits for the counts. slots, scales and x_sf travel
        // side by side in one byte row.
        let mut parts: Vec<&Tensor> = vec![&p.slots];
        parts.extend(p.scales.as_ref());
        parts.extend(p.x_sf.as_ref());
        let gathered = match &index {
            None => None,
            Some(index) => {
                let x = cuda::gather_rows_indexed(&p.x, index, 0, m)?;
                Profile::mark(&mut self.profile, "gather_x", Some(&x))?;
                let packed = cuda::gather_pack_rows(&parts, index, 0, m)?;
                Profile::mark(&mut self.profile, "pack_meta", Some(&packed))?;
                Some((x, packed))
            }
        };
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
        Profile::mark(&mut self.profile, "counts_exchange", None)?;
        let group = &self.group;
        let exchange = |t: &Tensor| -> Result<Tensor> { group.all_to_all_v(t, &send_counts, &recv_counts, deadline) };
        let out = match gathered {
            None => {
                let gathered = |t: &Tensor| exchange(&ops::gather_rows(t, &order)?);
                DispatchPayload {
                    x: gathered(&p.x)?,
                    x_sf: p.x_sf.as_ref().map(gathered).transpose()?,
                    slots: gathered(&p.slots)?,
                    scales: p.scales.as_ref().map(gathered).transpose()?,
                }
            }
            Some((x, packed)) => {
                let x = exchange(&x)?;
                Profile::mark(&mut self.profile, "x_exchange", None)?;
                let fields: Vec<(DType, Vec<usize>)> = parts
                    .iter()
                    .map(|t| (t.dtype(), t.shape().get(1..).unwrap_or(&[]).to_vec()))
                    .collect();
                let packed = exchange(&packed)?;
                Profile::mark(&mut self.profile, "meta_exchange", None)?;
                let unpacked = cuda::unpack_rows(&packed, &fields)?;
                Profile::mark(&mut self.profile, "unpack_meta", unpacked.first())?;
                let mut unpacked = unpacked.into_iter();
                let mut next = || {
                    unpacked
                        .next()
                        .ok_or_else(|| MoeError::lifecycle("alltoall: a packed field is missing"))
                };
                let slots = next()?;
                let scales = p.scales.as_ref().map(|_| next()).transpose()?;
                let x_sf = p.x_sf.as_ref().map(|_| next()).transpose()?;
                DispatchPayload { x, x_sf, slots, scales }
            }
        };
        self.route = Some(Route {
            order,
            send_counts,
            recv_counts,
            local_rows: n,
            index,
        });
        Ok(out)
    }

    fn combine(&mut self, out: Tensor, _: usize) -> Result<Tensor> {
        let route = self
            .route
            .take()
            .ok_or_else(|| MoeError::lifecycle("all-to-all combine without a dispatch"))?;
        let deadline = Deadline::after(self.timeout);
        Profile::start(&mut self.profile);
        let back = self
            .group
            .all_to_all_v(&out, &route.recv_counts, &route.send_counts, deadline)?;
        Profile::mark(&mut self.profile, "combine_exchange", None)?;
        let dtype = if out.dtype().is_float_activation() {
            out.dtype()
        } else {
            DType::F32
        };
        let n = route.local_rows;
        match &route.index {
            Some(index) if !back.is_host() => {
                let m = route.order.len();
                let sum = cuda::segment_sum_rows_indexed(&back, index, m, m + n + 1, n, dtype)?;
                Profile::mark(&mut self.profile, "segment_sum", Some(&sum))?;
                Ok(sum)
            }
            _ => {
                let (offsets, rows) = rows_by_token(&route.order, n);
                ops::segment_sum_rows(&back, &offsets, &rows, dtype)
            }
        }
    }

    fn destroy(&mut self) -> Result<()> {
        self.group.barrier(Deadline::after(self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InProcessGroup;

    #[test]
    fn rows_by_token_lists_each_tokens_rows_in_arrival_order() {
        let (offsets, rows) = rows_by_token(&[2, 0, 2, 1, 0], 4);
        assert_eq!(offsets, vec![0, 2, 3, 5, 5]);
        assert_eq!(rows, vec![1, 4, 3, 0, 2]);
    }

    #[test]
    fn combine_sums_each_token_over_the_ranks_it_visited() {
        const H: usize = 5;
        const K: usize = 3;
        let list = vec![4usize, 0, 3];
        // Slot s lives on rank s / 2.
        let owner = vec![0, 0, 1, 1, 2, 2];
        let slots_of = |r: usize, t: usize| -> [i32; K] {
            let a = ((r * 5 + t * 3) % 6) as i32;
            [a, (a + 1) % 6, (a + 4) % 6]
        };
        let x_of = |r: usize, t: usize, c: usize| ((r * 11 + t * 7 + c) % 7) as f32 - 3.0;
        let handles: Vec<_> = InProcessGroup::world(3)
            .into_iter()
            .enumerate()
            .map(|(r, g)| {
                let (list, owner) = (list.clone(), owner.clone());
                std::thread::spawn(move || {
                    let n = list[r];
                    let x: Vec<f32> = (0..n).flat_map(|t| (0..H).map(move |c| x_of(r, t, c))).collect();
                    let slots: Vec<i32> = (0..n).flat_map(|t| slots_of(r, t)).collect();
                    let payload = DispatchPayload {
                        x: Tensor::from_f32_as(DType::BF16, vec![n, H], &x).unwrap(),
                        x_sf: None,
                        slots: Tensor::from_i32(vec![n, K], slots).unwrap(),
                        scales: None,
                    };
                    let mut s = AllToAll::new(Arc::new(g), Duration::from_secs(10), owner.clone(), 1 << 10);
                    let d = s.dispatch(payload, &list, false).unwrap();
                    let out = s.combine(d.x.clone(), 4).unwrap();
                    let want: Vec<f32> = (0..n)
                        .flat_map(|t| {
                            let mut seen = [false; 3];
                            slots_of(r, t).iter().for_each(|&s| seen[owner[s as usize]] = true);
                            let visits = seen.iter().filter(|&&b| b).count() as f32;
                            (0..H).map(move |c| x_of(r, t, c) * visits)
                        })
                        .collect();
                    (out.dtype(), out.shape().to_vec(), out.to_f32_vec("out").unwrap(), want)
                })
            })
            .collect();
        for (r, h) in handles.into_iter().enumerate() {
            let (dtype, shape, got, want) = h.join().unwrap();
            assert_eq!(dtype, DType::BF16, "rank {r}");
            assert_eq!(shape, vec![list[r], H], "rank {r}");
            assert_eq!(got, want, "rank {r}");
        }
    }
}
