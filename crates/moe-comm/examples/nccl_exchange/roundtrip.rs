//! Stage `roundtrip`: each strategy's dispatch+combine on device tensors over the group,
//! against the same strategy over `InProcessGroup` threads fed the same inputs.

use std::borrow::Cow;
use std::sync::Arc;

use moe_comm::{AllGatherReduceScatter, AllToAll, InProcessGroup, NcclGroup, PackedAllGather};
use moe_core::{Communication, DType, DispatchPayload, MoeError, ProcessGroup, Result, Tensor};

use crate::data::{Rng, owners, random, routing, same};
use crate::{DEADLINE, Opts};

/// Every rank's inputs of one exchange, host tensors (rebuilt identically on every rank).
pub(crate) struct Inputs {
    pub(crate) list: Vec<usize>,
    pub(crate) x: Vec<Tensor>,
    pub(crate) slots: Vec<Tensor>,
    pub(crate) scales: Vec<Tensor>,
}

pub(crate) fn inputs(o: &Opts, p: usize, dtype: DType, hidden: usize, experts: usize, topk: usize) -> Result<Inputs> {
    let list: Vec<usize> = (0..p).map(|s| if s == 1 { 0 } else { 40 + 13 * s }).collect();
    let mut x = Vec::new();
    let mut slots = Vec::new();
    let mut scales = Vec::new();
    for (s, &n) in list.iter().enumerate() {
        let mut rng = Rng::new(o.seed, s, 300 + hidden as u64);
        x.push(random(dtype, n, hidden, &mut rng)?);
        slots.push(Tensor::from_i32(vec![n, topk], routing(n, experts, topk, &mut rng))?);
        scales.push(random(DType::F32, n, topk, &mut rng)?);
    }
    Ok(Inputs { list, x, slots, scales })
}

pub(crate) fn strategy(kind: &str, group: Arc<dyn ProcessGroup>, owner: Vec<usize>) -> Box<dyn Communication> {
    match kind {
        "alltoall" => Box::new(AllToAll::new(group, DEADLINE, owner, 1 << 20)),
        "allgather" => Box::new(AllGatherReduceScatter::new(group, DEADLINE)),
        _ => Box::new(PackedAllGather::new(group, DEADLINE, 1 << 20)),
    }
}

/// Dispatch, an identity "expert" (the dispatched rows are the output), combine.
pub(crate) fn exchange<'a>(
    s: &mut dyn Communication,
    payload: DispatchPayload<'a>,
    list: &[usize],
) -> Result<(DispatchPayload<'a>, Tensor)> {
    let max = list.iter().copied().max().unwrap_or(0);
    let d = s.dispatch(payload, list, false)?;
    let out = d.x.clone().into_owned();
    let combined = s.combine(out, max)?;
    Ok((d, combined))
}

pub(crate) fn check_roundtrip(
    g: &Arc<NcclGroup>,
    o: &Opts,
    kind: &str,
    dtype: DType,
    hidden: usize,
    topk: usize,
    bad: &mut Vec<String>,
) -> Result<()> {
    let (r, p) = (g.rank(), g.size());
    let experts = 16;
    let owner = owners(experts, p);
    let inp = Arc::new(inputs(o, p, dtype, hidden, experts, topk)?);
    // The reference: the same strategy over in-process threads, host tensors.
    let handles: Vec<_> = InProcessGroup::world(p)
        .into_iter()
        .enumerate()
        .map(|(s, ig)| {
            let (inp, owner, kind) = (inp.clone(), owner.clone(), kind.to_string());
            std::thread::spawn(move || {
                let mut st = strategy(&kind, Arc::new(ig), owner);
                let payload = DispatchPayload {
                    x: Cow::Owned(inp.x[s].clone()),
                    x_sf: None,
                    slots: inp.slots[s].clone(),
                    scales: Some(inp.scales[s].clone()),
                };
                exchange(st.as_mut(), payload, &inp.list)
            })
        })
        .collect();
    let mut reference = None;
    for (s, h) in handles.into_iter().enumerate() {
        let res = h
            .join()
            .map_err(|_| MoeError::lifecycle("in-process reference thread panicked"))??;
        if s == r {
            reference = Some(res);
        }
    }
    let (want_d, want_c) = reference.ok_or_else(|| MoeError::lifecycle("no reference for this rank"))?;
    // The same on device tensors over NCCL.
    let dev = g.device();
    let payload = DispatchPayload {
        x: Cow::Owned(dev.upload(&inp.x[r])?),
        x_sf: None,
        slots: dev.upload(&inp.slots[r])?,
        scales: Some(dev.upload(&inp.scales[r])?),
    };
    let mut st = strategy(kind, g.clone(), owner);
    let (got_d, got_c) = exchange(st.as_mut(), payload, &inp.list)?;
    if got_d.x.is_host() || got_c.is_host() {
        bad.push(format!("{kind} {dtype}: device payload came back on the host"));
    }
    let what = format!("{kind} {dtype} h{hidden} k{topk}");
    same(bad, &format!("{what} dispatched x"), &got_d.x, &want_d.x)?;
    same(bad, &format!("{what} dispatched slots"), &got_d.slots, &want_d.slots)?;
    match (&got_d.scales, &want_d.scales) {
        (Some(a), Some(b)) => same(bad, &format!("{what} dispatched scales"), a, b)?,
        _ => bad.push(format!("{what}: scales lost")),
    }
    same(bad, &format!("{what} combined"), &got_c, &want_c)?;
    st.destroy()?;
    Ok(())
}
