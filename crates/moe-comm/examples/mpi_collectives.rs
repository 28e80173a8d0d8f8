//! Checks every collective of `MpiGroup` across the ranks of `mpirun -n N`, including a
//! stalled rank that must turn into a deadline error naming it. Exits non-zero on any
//! failure; run by `cargo xtask test` under `mpirun -n 2` and `-n 4`.

use std::process::ExitCode;
use std::time::Duration;

use moe_comm::MpiGroup;
use moe_core::{Deadline, MoeError, ProcessGroup, Result, Tensor};

fn soon() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

fn rows(r: usize, n: usize) -> Tensor {
    Tensor::from_f32(vec![n, 2], (0..n).flat_map(|i| [(100 * r + i) as f32, -1.0]).collect()).expect("rows")
}

fn check(g: &MpiGroup) -> Result<Vec<String>> {
    let (r, p) = (g.rank(), g.size());
    let mut failures = Vec::new();
    let mut expect = |ok: bool, what: &str| {
        if !ok {
            failures.push(format!("rank {r}: {what}"));
        }
    };
    // Uneven counts, one rank empty.
    let counts: Vec<usize> = (0..p).map(|i| if i == 1 { 0 } else { i + 1 }).collect();
    let all = g.all_gather_v(&rows(r, counts[r]), &counts, soon())?;
    let want: Vec<f32> = (0..p)
        .flat_map(|s| (0..counts[s]).flat_map(move |i| [(100 * s + i) as f32, -1.0]))
        .collect();
    expect(all.to_f32_vec("all")? == want, "all_gather_v");
    let back = g.reduce_scatter_v(&all, &counts, soon())?;
    let mine: Vec<f32> = rows(r, counts[r])
        .to_f32_vec("mine")?
        .iter()
        .map(|v| v * p as f32)
        .collect();
    expect(back.to_f32_vec("back")? == mine, "reduce_scatter_v");
    // Rank r sends s + 1 rows to every rank s.
    let send_counts: Vec<usize> = (0..p).map(|s| s + 1).collect();
    let recv_counts = vec![r + 1; p];
    let sent = rows(r, send_counts.iter().sum());
    let got = g.all_to_all_v(&sent, &send_counts, &recv_counts, soon())?;
    let start: usize = (0..r).map(|s| s + 1).sum();
    let want: Vec<f32> = (0..p)
        .flat_map(|s| (start..start + r + 1).flat_map(move |i| [(100 * s + i) as f32, -1.0]))
        .collect();
    expect(got.to_f32_vec("a2a")? == want, "all_to_all_v");
    let sum = g.all_reduce_sum(&Tensor::from_f32(vec![2], vec![r as f32, 1.0])?, soon())?;
    expect(
        sum.to_f32_vec("sum")? == vec![(p * (p - 1) / 2) as f32, p as f32],
        "all_reduce_sum",
    );
    expect(
        g.all_gather_usize(r * 3, soon())? == (0..p).map(|s| s * 3).collect::<Vec<_>>(),
        "all_gather_usize",
    );
    g.barrier(soon())?;
    // The last rank stalls past rank 0's deadline: rank 0 must get an error naming a peer
    // instead of hanging.
    if r == p - 1 {
        std::thread::sleep(Duration::from_millis(1500));
    }
    let res = g.barrier(Deadline::after(Duration::from_millis(500)));
    if r == 0 {
        expect(
            matches!(res, Err(MoeError::Comm { peer: Some(_), .. })),
            "stalled peer reported at the deadline",
        );
    }
    Ok(failures)
}

fn main() -> ExitCode {
    let g = match MpiGroup::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match check(&g) {
        Ok(f) if f.is_empty() => {
            println!("rank {} of {}: all collectives ok", g.rank(), g.size());
            ExitCode::SUCCESS
        }
        Ok(f) => {
            eprintln!("{}", f.join("\n"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("rank {}: error: {e}", g.rank());
            ExitCode::FAILURE
        }
    }
}
