//! A child (one rank): joins the NCCL world from the unique-id file and runs the chosen stages
//! in order, reporting each.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use moe_comm::NcclGroup;
use moe_core::{DType, Deadline};

use crate::Opts;
use crate::bandwidth::bandwidth;
use crate::collectives::check_collectives;
use crate::failures::{dead, stall};
use crate::report::Report;
use crate::roundtrip::check_roundtrip;

pub(crate) fn child(rank: usize, world: usize, id: &str, o: &Opts) -> ExitCode {
    let mut rep = Report {
        rank,
        json: o.json,
        failed: false,
    };
    let g = match NcclGroup::from_unique_id_file(id, rank, world, rank, Deadline::after(Duration::from_secs(120))) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            for s in &o.stages {
                rep.result(s, Some(false), &format!("bootstrap failed: {e}"), "");
            }
            return ExitCode::FAILURE;
        }
    };
    println!("rank {rank} of {world}: {} ({:?})", g.device().name(), g.device());
    let run = |s: &str| o.stages.iter().any(|x| x == s);
    if run("collectives") {
        let mut bad = Vec::new();
        for dtype in [DType::F32, DType::BF16] {
            match check_collectives(&g, o, dtype) {
                Ok(mut b) => bad.append(&mut b),
                Err(e) => bad.push(format!("{dtype}: {e}")),
            }
        }
        rep.failures(
            "collectives",
            &bad,
            "all_gather_v, reduce_scatter_v, all_to_all_v, all_reduce_sum, all_gather_usize, barrier (f32, bf16)",
        );
    }
    if run("roundtrip") {
        let mut bad = Vec::new();
        let cases = [(DType::BF16, 384, 4), (DType::F32, 101, 3), (DType::BF16, 99, 2)];
        for kind in ["alltoall", "allgather", "packed"] {
            for (dtype, hidden, topk) in cases {
                if let Err(e) = check_roundtrip(&g, o, kind, dtype, hidden, topk, &mut bad) {
                    bad.push(format!("{kind} {dtype} h{hidden}: {e}"));
                }
            }
        }
        rep.failures(
            "roundtrip",
            &bad,
            "alltoall, allgather, packed on device == in-process (bf16 h384 k4, f32 h101 k3, bf16 h99 k2)",
        );
    }
    if run("bandwidth") {
        let res = bandwidth(&g, o, &mut rep);
        rep.error("bandwidth", res);
    }
    if run("stall") {
        let res = stall(&g, o, &mut rep);
        rep.error("stall", res);
    }
    drop(g);
    if run("dead") {
        let res = dead(rank, world, id, &mut rep);
        rep.error("dead", res);
    }
    if rep.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
