//! The launcher half: spawns one child per GPU (rank r on GPU r, told its rank, world and
//! unique-id file through `NCCL_EXCHANGE_*` variables), forwards their lines, waits for them
//! with a timeout and prints every child's exit status and the summary table.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{ENV_ID, ENV_RANK, ENV_WORLD, Opts, STAGES, VICTIM_EXIT};

/// One result line of a child (`SUMMARY\t<stage>\t<status>\t<detail>`).
pub(crate) struct Row {
    rank: usize,
    stage: String,
    status: String,
    detail: String,
}

pub(crate) fn launch(o: &Opts) -> ExitCode {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("nccl-exchange-{}-{stamp}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let id = dir.join("nccl.id");
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("locating this binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "nccl-exchange: world {}, stages {}, NCCL_NVLS_ENABLE={}",
        o.world,
        o.stages.join(","),
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_else(|_| "(unset)".into()),
    );
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children: Vec<Option<Child>> = Vec::new();
    for rank in 0..o.world {
        let spawned = Command::new(&exe)
            .args(std::env::args().skip(1))
            .env(ENV_RANK, rank.to_string())
            .env(ENV_WORLD, o.world.to_string())
            .env(ENV_ID, &id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut c) => {
                forward(rank, c.stdout.take(), &tx);
                forward(rank, c.stderr.take(), &tx);
                children.push(Some(c));
            }
            Err(e) => {
                eprintln!("spawning rank {rank}: {e}");
                children.push(None);
            }
        }
    }
    drop(tx);
    let start = Instant::now();
    let mut statuses: Vec<Option<String>> = vec![None; o.world];
    let mut codes: Vec<Option<i32>> = vec![None; o.world];
    let mut rows = Vec::new();
    let mut killed = false;
    loop {
        if let Ok((rank, line)) = rx.recv_timeout(Duration::from_millis(100)) {
            show(rank, &line, &mut rows);
            continue;
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Ok(Some(st)) = c.try_wait() {
                codes[rank] = st.code();
                statuses[rank] = Some(st.to_string());
                *slot = None;
            }
        }
        let running = children.iter().filter(|c| c.is_some()).count();
        if running == 0 {
            // Drain what the pipes still hold.
            while let Ok((rank, line)) = rx.recv_timeout(Duration::from_millis(200)) {
                show(rank, &line, &mut rows);
            }
            break;
        }
        if start.elapsed() > o.timeout {
            killed = true;
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(c) = slot.as_mut() {
                    let _ = c.kill();
                    let st = c.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    statuses[rank] = Some(format!("killed after the {}s timeout ({st})", o.timeout.as_secs()));
                }
                *slot = None;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("== summary (world {}) ==", o.world);
    println!("{:<12} {:>4}  {:<6} detail", "stage", "rank", "status");
    rows.sort_by_key(|r| (STAGES.iter().position(|s| *s == r.stage).unwrap_or(99), r.rank));
    for r in &rows {
        println!("{:<12} {:>4}  {:<6} {}", r.stage, r.rank, r.status, r.detail);
    }
    let victim = o.world - 1;
    let dead = o.stages.iter().any(|s| s == "dead") && o.world > 1;
    let mut ok = !killed && rows.iter().all(|r| r.status != "FAIL");
    println!();
    for rank in 0..o.world {
        let expected = if dead && rank == victim { VICTIM_EXIT } else { 0 };
        let good = codes[rank] == Some(expected);
        ok &= good;
        println!(
            "rank {rank}: {} (expected exit status {expected}){}",
            statuses[rank].as_deref().unwrap_or("unknown (not spawned)"),
            if good { "" } else { "  <-- unexpected" }
        );
    }
    for stage in &o.stages {
        for rank in 0..o.world {
            if !rows.iter().any(|r| &r.stage == stage && r.rank == rank) {
                ok = false;
                println!("rank {rank}: no result for stage `{stage}`");
            }
        }
    }
    println!("RESULT: {}", if ok { "PASS" } else { "FAIL" });
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Prints a child's line (JSON lines unprefixed) and keeps its result rows.
pub(crate) fn show(rank: usize, line: &str, rows: &mut Vec<Row>) {
    if line.starts_with('{') {
        println!("{line}");
    } else {
        println!("[rank {rank}] {line}");
    }
    if let Some(rest) = line.strip_prefix("SUMMARY\t") {
        let mut f = rest.splitn(3, '\t');
        rows.push(Row {
            rank,
            stage: f.next().unwrap_or("").into(),
            status: f.next().unwrap_or("").into(),
            detail: f.next().unwrap_or("").into(),
        });
    }
}

/// Forwards the lines of a child's pipe to the launcher.
pub(crate) fn forward(rank: usize, pipe: Option<impl Read + Send + 'static>, tx: &mpsc::Sender<(usize, String)>) {
    let Some(pipe) = pipe else { return };
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send((rank, line)).is_err() {
                break;
            }
        }
    });
}
