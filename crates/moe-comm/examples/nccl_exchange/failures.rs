//! Stages `stall` and `dead`: a rank that stalls past the others' deadline, and one that exits
//! mid-collective; the others must fail with `MoeError::Comm` naming it.

use std::time::{Duration, Instant};

use moe_comm::NcclGroup;
use moe_core::{DType, Deadline, MoeError, ProcessGroup, Result};

use crate::data::soon;
use crate::report::Report;
use crate::{Opts, VICTIM_EXIT};

pub(crate) fn stall(g: &NcclGroup, o: &Opts, rep: &mut Report) -> Result<()> {
    let (r, p) = (g.rank(), g.size());
    g.barrier(soon())?;
    let victim = p - 1;
    if p == 1 {
        rep.result("stall", None, "a world of one has no peer to stall", "");
        return Ok(());
    }
    if r == victim {
        // Stall past the others' deadline, then leave this communicator alone: the others
        // aborted theirs.
        std::thread::sleep(o.stall + Duration::from_secs(2));
        rep.result(
            "stall",
            Some(true),
            &format!("stalled {} s past the others' deadline", o.stall.as_secs() + 2),
            "",
        );
        return Ok(());
    }
    let t0 = Instant::now();
    let res = g.barrier(Deadline::after(o.stall));
    let el = t0.elapsed();
    let on_time = el < o.stall + Duration::from_secs(2);
    let (ok, detail) = blamed(&res, victim, el, on_time, "the barrier passed although a rank stalled");
    rep.result(
        "stall",
        Some(ok),
        &detail,
        &format!("\"elapsed_s\":{:.3}", el.as_secs_f64()),
    );
    Ok(())
}

pub(crate) fn dead(rank: usize, world: usize, id: &str, rep: &mut Report) -> Result<()> {
    let victim = world - 1;
    if world == 1 {
        rep.result("dead", None, "a world of one has no peer to lose", "");
        return Ok(());
    }
    let g = NcclGroup::from_unique_id_file(
        format!("{id}.dead"),
        rank,
        world,
        rank,
        Deadline::after(Duration::from_secs(120)),
    )?;
    g.barrier(soon())?;
    if rank == victim {
        rep.result("dead", Some(true), "exiting while the others wait in an all-to-all", "");
        std::thread::sleep(Duration::from_millis(500));
        std::process::exit(VICTIM_EXIT);
    }
    let rows = 1024;
    let t = g.device().zeros(DType::BF16, vec![world * rows, 7168])?;
    let deadline = Duration::from_secs(30);
    let t0 = Instant::now();
    let res = g.all_to_all_v(&t, &vec![rows; world], &vec![rows; world], Deadline::after(deadline));
    let el = t0.elapsed();
    let (ok, detail) = blamed(
        &res,
        victim,
        el,
        el < deadline,
        "the all-to-all completed although a rank exited",
    );
    rep.result(
        "dead",
        Some(ok),
        &detail,
        &format!("\"elapsed_s\":{:.3}", el.as_secs_f64()),
    );
    Ok(())
}

/// The verdict of a stage that expects `res` to fail in time with `MoeError::Comm` naming
/// `victim` (`passed` says what went wrong when it succeeded instead), and its detail.
fn blamed<T>(res: &Result<T>, victim: usize, el: Duration, in_time: bool, passed: &str) -> (bool, String) {
    let secs = el.as_secs_f64();
    match res {
        Err(e @ MoeError::Comm { peer: Some(q), .. }) if *q == victim && in_time => {
            (true, format!("after {secs:.2} s: {e}"))
        }
        Err(e) => (
            false,
            format!("after {secs:.2} s, expected a Comm error naming rank {victim}: {e}"),
        ),
        Ok(_) => (false, passed.into()),
    }
}
