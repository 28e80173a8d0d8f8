//! Choosing and building the layer's communication strategy over its process group: the one
//! place that names the concrete strategies of `moe-comm`.
//!
//! Order for `auto`: a single rank needs none; replicated tokens (no attention-DP) or MoE-TP
//! need the all-gather family; otherwise small chunk caps prefer the packed one-collective
//! strategy and larger ones the all-to-all, unless random routing would send nearly every
//! token to every rank anyway (`moe_comm::expected_peer_share` at or above
//! `ALLGATHER_PREFERRED_SHARE`: few ranks, large top-k), where AllGather+ReduceScatter moves
//! about the same bytes without the all-to-all's routing and counts exchange. The all-to-all's
//! infeasible workloads fall back to AllGather+ReduceScatter at forward time.

use std::sync::Arc;
use std::time::Duration;

use moe_comm::{ALLGATHER_PREFERRED_SHARE, AllGatherReduceScatter, AllToAll, PackedAllGather, expected_peer_share};
use moe_core::{CommSelection, Communication, ExpertPartition, MoeConfig, MoeError, ProcessGroup, Result};

use crate::comm_slot::FallbackFactory;

/// Strategy names accepted by `--comm` and [`crate::LayerParts::comm_choice`].
pub const COMM_NAMES: &[&str] = &["auto", "allgather", "alltoall", "packed"];

/// Rows one packed dispatch may gather (all ranks, one chunk): beyond it the exchange is
/// bandwidth-bound and the packing copy stops paying for itself.
const PACKED_MAX_ROWS: usize = 256;
/// Rows one rank may send per all-to-all chunk (its exchange workspace).
const ALLTOALL_CAPACITY_ROWS: usize = 1 << 20;

pub(crate) struct BuiltComm {
    pub strategy: Option<Box<dyn Communication>>,
    pub fallback: Option<FallbackFactory>,
    pub selection: Option<CommSelection>,
}

pub(crate) fn build_comm(
    config: &MoeConfig,
    group: Option<Arc<dyn ProcessGroup>>,
    requested: &str,
    timeout: Duration,
    allow_non_divisible: bool,
) -> Result<BuiltComm> {
    let p = &config.parallel;
    let world = p.parallel_size();
    if world == 1 {
        return Ok(BuiltComm {
            strategy: None,
            fallback: None,
            selection: None,
        });
    }
    let group = group.ok_or_else(|| {
        MoeError::config(
            "parallel",
            format!("the layer spans {world} ranks but no process group was given"),
        )
    })?;
    if group.size() != world || group.rank() != p.parallel_rank() {
        return Err(MoeError::config(
            "parallel",
            format!(
                "process group is rank {} of {}, but the config places this rank at {} of {world}",
                group.rank(),
                group.size(),
                p.parallel_rank()
            ),
        ));
    }
    let mut passed_over = Vec::new();
    let replicated = !p.attention_dp;
    let name = match requested {
        "auto" => {
            if replicated || p.tp_size > 1 {
                let why = if replicated {
                    "tokens are replicated without attention-DP"
                } else {
                    "MoE-TP shards every expert"
                };
                passed_over.push(("alltoall".to_string(), why.to_string()));
                "allgather"
            } else if config.moe_max_num_tokens.is_some_and(|m| m * world <= PACKED_MAX_ROWS) {
                "packed"
            } else {
                passed_over.push((
                    "packed".to_string(),
                    format!("chunks may exceed its {PACKED_MAX_ROWS}-row budget"),
                ));
                let slots = config.eplb.as_ref().map_or(config.num_experts, |e| e.num_slots);
                let share = expected_peer_share(slots, world, config.top_k());
                if share >= ALLGATHER_PREFERRED_SHARE {
                    passed_over.push((
                        "alltoall".to_string(),
                        format!(
                            "each rank would receive {:.1}% of every other rank's tokens (top-{} of {slots} slots over {world} ranks): too few bytes saved for its routing and counts exchange",
                            share * 100.0,
                            config.top_k()
                        ),
                    ));
                    "allgather"
                } else {
                    "alltoall"
                }
            }
        }
        "alltoall" if replicated || p.tp_size > 1 => {
            return Err(MoeError::config(
                "comm",
                "alltoall needs attention-DP and MoE-TP size 1 (every token lives on one rank, every expert on one rank)",
            ));
        }
        "allgather" | "alltoall" | "packed" => requested,
        other => {
            return Err(MoeError::config(
                "comm",
                format!("unknown strategy `{other}`; known: {}", COMM_NAMES.join(", ")),
            ));
        }
    };
    let strategy: Box<dyn Communication> = match name {
        "allgather" => Box::new(AllGatherReduceScatter::new(group.clone(), timeout)),
        "packed" => Box::new(PackedAllGather::new(group.clone(), timeout, PACKED_MAX_ROWS)),
        _ => Box::new(AllToAll::new(
            group.clone(),
            timeout,
            slot_owners(config, allow_non_divisible)?,
            ALLTOALL_CAPACITY_ROWS,
        )),
    };
    let fallback_group = group;
    let fallback: FallbackFactory = Box::new(move || {
        Ok(Box::new(AllGatherReduceScatter::new(fallback_group.clone(), timeout)) as Box<dyn Communication>)
    });
    Ok(BuiltComm {
        strategy: Some(strategy),
        fallback: Some(fallback),
        selection: Some(CommSelection {
            requested: requested.to_string(),
            chosen: Some(name.to_string()),
            passed_over,
        }),
    })
}

/// Owning rank of every global slot (MoE-TP is 1 here, so EP rank = communicator rank).
fn slot_owners(config: &MoeConfig, allow_non_divisible: bool) -> Result<Vec<usize>> {
    let mut owners = Vec::new();
    for r in 0..config.parallel.ep_size {
        let mut c = config.clone();
        c.parallel.ep_rank = r;
        let part = ExpertPartition::compute(&c, allow_non_divisible)?;
        owners.resize(part.num_slots, usize::MAX);
        owners[part.slot_start..part.slot_end].iter_mut().for_each(|o| *o = r);
    }
    if let Some(s) = owners.iter().position(|&o| o == usize::MAX) {
        return Err(MoeError::config("parallel", format!("slot {s} belongs to no rank")));
    }
    Ok(owners)
}
