//! Multi-GPU check and benchmark of `NcclGroup` and the dispatch/combine strategies over it.
//! It is its own launcher: `nccl-exchange --world N` spawns N copies of itself (rank r on GPU
//! r, told their rank, world and unique-id file through `NCCL_EXCHANGE_*` variables, with the
//! rest of the environment, `NCCL_NVLS_ENABLE=0` included, inherited), waits for them with a
//! timeout and reports every child's exit status and a summary table.
//!
//! Stages (`--stages a,b,...`; default all, always run in this order):
//! - `collectives`: every collective of the group against host-computed expectations on random
//!   f32 and bf16 data (uneven and empty counts, odd row widths, host and device inputs); sums
//!   must be bit-identical to the host's f32-in-rank-order sums.
//! - `roundtrip`: AllToAll, AllGather+ReduceScatter and PackedAllGather dispatch+combine on
//!   device tensors, against the same strategy over `InProcessGroup` threads fed the same
//!   inputs (every rank rebuilds all ranks' inputs from seeds): bit-identical.
//! - `bandwidth`: AllToAll and AllGather+ReduceScatter dispatch+combine at `--tokens` per rank
//!   x `--hidden` bf16, top-k `--topk` over `--experts` experts spread evenly over the ranks,
//!   random routing: the all-to-all's bytes (dispatch rows x (hidden + slots + weights),
//!   combine rows x hidden; the rows the routing needs, the measure of both strategies) over
//!   the median wall time of dispatch+combine (every collective returns after its device work
//!   finished), next to this group's raw `all_to_all_v` of equal splits of the same bytes;
//!   with latency probes (a device all_to_all_v of 8 bytes per peer, the same from a host
//!   tensor, all_gather_usize, a bare device synchronisation) and, for the all-to-all, the
//!   median of every phase of a profiled dispatch+combine (`AllToAll::set_profile`). The
//!   strategy `auto` picks for the shape (`expected_peer_share` against
//!   `ALLGATHER_PREFERRED_SHARE`, the comm factory's rule) on the group's default data plane is
//!   `bandwidth` (PASS/FAIL on the 70% bar); the other strategy and the all-to-all on the
//!   non-blocking communicator are `bandwidth_variant` (INFO), each with its own output check.
//! - `stall`: the last rank stalls past the others' deadline; they must fail with
//!   `MoeError::Comm` naming it, at the deadline.
//! - `dead`: on a fresh communicator the last rank exits (status 17) while the others wait
//!   inside an all-to-all; they must fail with `MoeError::Comm` naming it, well before their
//!   deadline.
//!
//! Output: child lines prefixed `[rank r]`; with `--json`, one JSON object per result line
//! (`{"stage":...}`), unprefixed. Exit status 0 iff every stage passed on every rank and every
//! child exited as expected.
//!
//! Files: `launcher.rs` (the parent), `child.rs` (one rank: bootstrap and the stage order),
//! `collectives.rs`, `roundtrip.rs`, `bandwidth.rs` and `failures.rs` (the stages),
//! `data.rs` (seeded inputs and the byte comparison), `report.rs` (result lines).

mod bandwidth;
mod child;
mod collectives;
mod data;
mod failures;
mod launcher;
mod report;
mod roundtrip;

use std::process::ExitCode;
use std::time::Duration;

use crate::child::child;
use crate::launcher::launch;

const ENV_RANK: &str = "NCCL_EXCHANGE_RANK";
const ENV_WORLD: &str = "NCCL_EXCHANGE_WORLD";
const ENV_ID: &str = "NCCL_EXCHANGE_ID";
/// Exit status of the rank the `dead` stage kills.
const VICTIM_EXIT: i32 = 17;
const STAGES: &[&str] = &["collectives", "roundtrip", "bandwidth", "stall", "dead"];
/// Deadline of the collectives of the passing stages.
const DEADLINE: Duration = Duration::from_secs(60);

const USAGE: &str = "usage: nccl-exchange --world N [--stages collectives,roundtrip,bandwidth,stall,dead]
       [--tokens 4096] [--hidden 7168] [--topk 8] [--experts 256] [--warmup 5] [--repeats 20]
       [--stall-s 3] [--timeout-s 900] [--seed 1] [--json]";

#[derive(Clone, Debug)]
struct Opts {
    world: usize,
    stages: Vec<String>,
    tokens: usize,
    hidden: usize,
    topk: usize,
    experts: usize,
    warmup: usize,
    repeats: usize,
    stall: Duration,
    timeout: Duration,
    seed: u64,
    json: bool,
}

fn parse_args() -> std::result::Result<Opts, String> {
    let mut o = Opts {
        world: 0,
        stages: STAGES.iter().map(|s| s.to_string()).collect(),
        tokens: 4096,
        hidden: 7168,
        topk: 8,
        experts: 256,
        warmup: 5,
        repeats: 20,
        stall: Duration::from_secs(3),
        timeout: Duration::from_secs(900),
        seed: 1,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--json" {
            o.json = true;
            continue;
        }
        if a == "--help" || a == "-h" {
            return Err(USAGE.into());
        }
        let v = args.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--world" => o.world = num(&v)?,
            "--stages" => {
                o.stages = v.split(',').map(str::to_owned).collect();
                if let Some(bad) = o.stages.iter().find(|s| !STAGES.contains(&s.as_str())) {
                    return Err(format!("unknown stage `{bad}`; known: {}", STAGES.join(",")));
                }
            }
            "--tokens" => o.tokens = num(&v)?,
            "--hidden" => o.hidden = num(&v)?,
            "--topk" => o.topk = num(&v)?,
            "--experts" => o.experts = num(&v)?,
            "--warmup" => o.warmup = num(&v)?,
            "--repeats" => o.repeats = num(&v)?.max(1),
            "--stall-s" => o.stall = Duration::from_secs(num(&v)? as u64),
            "--timeout-s" => o.timeout = Duration::from_secs(num(&v)? as u64),
            "--seed" => o.seed = num(&v)? as u64,
            _ => return Err(format!("unknown argument `{a}`\n{USAGE}")),
        }
    }
    if o.topk == 0 || o.topk > o.experts {
        return Err(format!("--topk {} must be in 1..={}", o.topk, o.experts));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match (std::env::var(ENV_RANK), std::env::var(ENV_WORLD), std::env::var(ENV_ID)) {
        (Ok(r), Ok(w), Ok(id)) => match (r.parse(), w.parse()) {
            (Ok(rank), Ok(world)) => child(rank, world, &id, &opts),
            _ => {
                eprintln!("bad {ENV_RANK}={r} / {ENV_WORLD}={w}");
                ExitCode::from(2)
            }
        },
        _ if opts.world >= 1 => launch(&opts),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
