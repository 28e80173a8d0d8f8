//! Two-sided all-to-all with variable counts: dispatch sends each token once to every
//! distinct rank that holds one of its slots (with all its slots and weights; the receiver's
//! backend skips slots it does not hold), combine sends the partial outputs back and sums
//! them per token. Moves `k`-times less data than all-gather when experts spread over ranks.
//!
//! A dispatch is two collectives, the same on every rank whatever its payload lives on:
//! 1. the **routing**: which rows go where (send order), how many to each rank, and each token's
//!    returned rows for combine. Device payloads build it on their device from the slot ids
//!    (`moe_kernels::cuda::alltoall_route`: nothing is read back); host payloads (and worlds
//!    past the kernel's 64 ranks) on the host. Either way it ends in a `head` of
//!    `[rows to each rank.., first bad token + 1, its slot]`;
//! 2. one **all-gather of the heads**: every rank learns its receive counts and whether any
//!    rank's tokens name a slot outside the owner table, which fails the dispatch on every rank
//!    alike (no rank is left waiting for a peer that gave up);
//! 3. the rows are gathered in send order and x, the slots, the routing weights and x's scale
//!    factors cross in **one** `all_to_all_v_many` (one NCCL group). On the device the gather
//!    (`gather_routed`, its row count read on the device) is queued before the heads' exchange,
//!    so the device never waits for the host between the two.
//!
//! Combine sends the outputs back and sums each token's rows in f32 in ascending row order
//! (`segment_sum_rows_indexed` on the device): same rows, same sums in the same order on either
//! path, so device and host runs are bit-identical. `AllToAll::set_profile` records the wall
//! time of every phase (benchmarks).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moe_core::{Communication, DType, Deadline, DispatchPayload, MoeError, ProcessGroup, Result, Storage, Tensor};
use moe_kernels::cuda::{self, ALLTOALL_ROUTE_MAX_RANKS, AllToAllRoute, CudaDevice, CudaStorage, download};
use moe_kernels::ops;

/// Where a dispatch's rows went, kept for its combine.
enum Rows {
    /// Host routing: the local token of every row sent, in send order.
    Host(Vec<usize>),
    /// Device routing, on the payload's device.
    Device(AllToAllRoute),
}

/// State a dispatch leaves for its combine.
struct Route {
    send_counts: Vec<usize>,
    recv_counts: Vec<usize>,
    local_rows: usize,
    rows: Rows,
}

/// All-to-all dispatch/combine over a slot -> rank ownership table.
pub struct AllToAll {
    group: Arc<dyn ProcessGroup>,
    timeout: Duration,
    /// Owning rank of every global slot.
    slot_owner: Vec<usize>,
    /// `slot_owner` as i32 on the device of the last device dispatch (uploaded once).
    owner_on_device: Option<Tensor>,
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

/// The expected share of a rank's tokens that one other rank receives in an all-to-all
/// dispatch under random routing: a token skips a rank holding `num_slots / world` of the
/// slots with probability C(num_slots - num_slots / world, top_k) / C(num_slots, top_k).
/// Near 1 (few ranks, large top-k) the all-to-all moves almost the all-gather's bytes while
/// paying for its routing, its row gather and its counts exchange on top.
pub fn expected_peer_share(num_slots: usize, world: usize, top_k: usize) -> f64 {
    if world <= 1 || num_slots == 0 {
        return 1.0;
    }
    let others = num_slots - num_slots / world;
    let skip: f64 = (0..top_k.min(num_slots))
        .map(|i| others.saturating_sub(i) as f64 / (num_slots - i) as f64)
        .product();
    1.0 - skip
}

/// At or above this [`expected_peer_share`] the all-gather strategy beats the all-to-all:
/// it saves too few bytes to pay for its routing, gather and counts exchange. Measured with
/// NCCL at 4096 tokens x hidden 7168 (see docs/BENCHMARKS.md, issue 4).
pub const ALLGATHER_PREFERRED_SHARE: f64 = 0.9;

/// The host routing: the local token of every row sent (rank-major, tokens ascending within a
/// rank), the rows sent to each rank, and the first token naming a slot outside `owner` with
/// that slot. The device kernel (`a2a_route`) builds the same lists.
fn host_route(
    slots: &[i32],
    k: usize,
    owner: &[usize],
    world: usize,
) -> (Vec<usize>, Vec<usize>, Option<(usize, i32)>) {
    let n = slots.len().checked_div(k).unwrap_or(0);
    let mut per_rank: Vec<Vec<usize>> = vec![Vec::with_capacity(n); world];
    // `stamp[r] == t + 1`: token t already goes to rank r.
    let mut stamp = vec![0usize; world];
    let mut bad = None;
    for t in 0..n {
        for &s in &slots[t * k..(t + 1) * k] {
            match usize::try_from(s).ok().and_then(|s| owner.get(s)) {
                Some(&r) if stamp[r] != t + 1 => {
                    stamp[r] = t + 1;
                    per_rank[r].push(t);
                }
                Some(_) => {}
                None => bad = bad.or(Some((t, s))),
            }
        }
    }
    let counts = per_rank.iter().map(Vec::len).collect();
    (per_rank.concat(), counts, bad)
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

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| MoeError::config(what, format!("{v} exceeds i32")))
}

/// `t` as host i32 values (downloaded when it lives on a device).
fn host_i32(t: &Tensor, what: &str) -> Result<Vec<i32>> {
    if t.is_host() {
        return Ok(t.as_i32(what)?.to_vec());
    }
    Ok(download(t)?.as_i32(what)?.to_vec())
}

impl AllToAll {
    /// `slot_owner[s]` is the rank holding global slot `s`.
    pub fn new(group: Arc<dyn ProcessGroup>, timeout: Duration, slot_owner: Vec<usize>, capacity_rows: usize) -> Self {
        AllToAll {
            group,
            timeout,
            slot_owner,
            owner_on_device: None,
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

    /// The owner table on `dev` (uploaded at the first dispatch on it).
    fn owner_on(&mut self, dev: &CudaDevice) -> Result<Tensor> {
        if let Some(t) = &self.owner_on_device
            && CudaStorage::of(t, "slot owners")?.device().ordinal() == dev.ordinal()
        {
            return Ok(t.clone());
        }
        let owner = self
            .slot_owner
            .iter()
            .map(|&r| to_i32(r, "slot owner"))
            .collect::<Result<Vec<_>>>()?;
        let t = dev.upload(&Tensor::from_i32(vec![owner.len()], owner)?)?;
        self.owner_on_device = Some(t.clone());
        Ok(t)
    }

    /// The host routing of `slots` as its head (`[1, world + 2]` i32) and the send order.
    fn route_on_host(&self, slots: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let world = self.group.size();
        let k = slots.row_len();
        let values = host_i32(slots, "dispatched slots")?;
        let (order, counts, bad) = host_route(&values, k, &self.slot_owner, world);
        let mut head = counts
            .iter()
            .map(|&c| to_i32(c, "alltoall rows"))
            .collect::<Result<Vec<_>>>()?;
        match bad {
            Some((t, s)) => head.extend([to_i32(t + 1, "alltoall token")?, s]),
            None => head.extend([0, 0]),
        }
        Ok((Tensor::from_i32(vec![1, world + 2], head)?, order))
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

    fn dispatch<'a>(&mut self, p: DispatchPayload<'a>, list: &[usize], _: bool) -> Result<DispatchPayload<'a>> {
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
        // 1. routing, on the payload's side.
        let dev = match p.x.storage() {
            Storage::Host(_) => None,
            Storage::Device(_) => Some(CudaStorage::of(&p.x, "dispatched x")?.device().clone()),
        };
        // Device payloads: the slot ids on the device once, for the routing and the gather.
        let slots = match &dev {
            Some(dev) => dev.upload(&p.slots)?,
            None => p.slots.clone(),
        };
        let (head, rows) = match &dev {
            None => {
                let (head, order) = self.route_on_host(&p.slots)?;
                (head, Rows::Host(order))
            }
            Some(dev) if size > ALLTOALL_ROUTE_MAX_RANKS => {
                // Worlds past the device kernel's: host routing, uploaded in its layout.
                let (head, order) = self.route_on_host(&slots)?;
                let (offsets, rows) = rows_by_token(&order, n);
                let route = AllToAllRoute::upload(dev, &order, &offsets, &rows, &head, k)?;
                (route.head.clone(), Rows::Device(route))
            }
            Some(dev) => {
                let owner = self.owner_on(dev)?;
                let route = cuda::alltoall_route(&slots, &owner, size)?;
                (route.head.clone(), Rows::Device(route))
            }
        };
        Profile::mark(&mut self.profile, "route", Some(&head))?;
        let mut fields: Vec<&Tensor> = vec![&*p.x, &slots];
        fields.extend(p.scales.as_ref());
        fields.extend(p.x_sf.as_ref());
        // Device routing: the send rows are gathered before the counts exchange, their number
        // read on the device, so the device gathers while the heads cross.
        let early = match (&rows, &dev) {
            (Rows::Device(route), Some(dev)) => Some(
                fields
                    .iter()
                    .map(|t| cuda::gather_routed(&dev.upload(t)?, route))
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        Profile::mark(&mut self.profile, "gather", early.as_ref().and_then(|g| g.first()))?;
        // 2. every rank's head: counts, and a bad slot anywhere refuses the dispatch everywhere.
        let deadline = Deadline::after(self.timeout);
        let heads = self.group.all_gather_v(&head, &vec![1; size], deadline)?;
        let heads = host_i32(&heads, "all-to-all routing heads")?;
        let counts = AllToAllRoute::counts(&heads, self.group.rank(), size, self.slot_owner.len())?;
        Profile::mark(&mut self.profile, "counts_exchange", None)?;
        // 3. the rows in send order (host routing: gathered now), then one exchange of them all.
        let m: usize = counts.send.iter().sum();
        let gathered = match (&rows, early) {
            (Rows::Host(order), _) => fields
                .iter()
                .map(|t| ops::gather_rows(t, order))
                .collect::<Result<Vec<_>>>()?,
            (Rows::Device(_), Some(early)) => early
                .iter()
                .map(|t| cuda::truncate_rows(t, m))
                .collect::<Result<Vec<_>>>()?,
            (Rows::Device(_), None) => return Err(MoeError::lifecycle("alltoall: a device routing of a host payload")),
        };
        let refs: Vec<&Tensor> = gathered.iter().collect();
        let mut exchanged = self
            .group
            .all_to_all_v_many(&refs, &counts.send, &counts.recv, deadline)?
            .into_iter();
        Profile::mark(&mut self.profile, "exchange", None)?;
        let mut next = || {
            exchanged
                .next()
                .ok_or_else(|| MoeError::lifecycle("alltoall: an exchanged field is missing"))
        };
        let out = DispatchPayload {
            x: Cow::Owned(next()?),
            slots: next()?,
            scales: p.scales.as_ref().map(|_| next()).transpose()?,
            x_sf: p.x_sf.as_ref().map(|_| next()).transpose()?,
        };
        self.route = Some(Route {
            send_counts: counts.send,
            recv_counts: counts.recv,
            local_rows: n,
            rows,
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
        let sum = match &route.rows {
            Rows::Device(r) if !back.is_host() => {
                cuda::segment_sum_rows_indexed(&back, &r.index, r.offsets_at(), r.rows_at(), n, dtype)?
            }
            Rows::Device(r) => {
                // A host output of a device dispatch: the listing comes back to the host once.
                let index = host_i32(&r.index, "all-to-all routing index")?;
                let m: usize = route.send_counts.iter().sum();
                let order: Vec<usize> = index[..m].iter().map(|&t| t as usize).collect();
                let (offsets, rows) = rows_by_token(&order, n);
                ops::segment_sum_rows(&back, &offsets, &rows, dtype)?
            }
            Rows::Host(order) => {
                let (offsets, rows) = rows_by_token(order, n);
                ops::segment_sum_rows(&back, &offsets, &rows, dtype)?
            }
        };
        Profile::mark(&mut self.profile, "segment_sum", Some(&sum))?;
        Ok(sum)
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
    fn expected_peer_share_follows_the_binomial_miss_rate() {
        // DeepSeek-V3 routing (top-8 of 256): 2 ranks miss a token with 0.5^8-ish odds.
        let two = expected_peer_share(256, 2, 8);
        let exact2 = 1.0 - (0..8).map(|i| (128.0 - i as f64) / (256.0 - i as f64)).product::<f64>();
        assert!((two - exact2).abs() < 1e-12 && two > 0.996 && two < 0.997, "{two}");
        let four = expected_peer_share(256, 4, 8);
        assert!(four > 0.90 && four < 0.905, "{four}");
        let eight = expected_peer_share(256, 8, 8);
        assert!(eight > 0.65 && eight < 0.67, "{eight}");
        // Mixtral (top-2 of 8) over 2 ranks: 1 - C(4,2)/C(8,2) = 22/28.
        assert!((expected_peer_share(8, 2, 2) - 22.0 / 28.0).abs() < 1e-12);
        // Every slot on every rank, or k past the other ranks' slots: always visited.
        assert_eq!(expected_peer_share(8, 1, 2), 1.0);
        assert_eq!(expected_peer_share(4, 4, 4), 1.0);
    }

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
                        x: Cow::Owned(Tensor::from_f32_as(DType::BF16, vec![n, H], &x).unwrap()),
                        x_sf: None,
                        slots: Tensor::from_i32(vec![n, K], slots).unwrap(),
                        scales: None,
                    };
                    let mut s = AllToAll::new(Arc::new(g), Duration::from_secs(10), owner.clone(), 1 << 10);
                    let d = s.dispatch(payload, &list, false).unwrap();
                    let out = s.combine(d.x.into_owned(), 4).unwrap();
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
