//! `moe-matrix`: runs the test matrix and prints one line per cell and a summary (what
//! `cargo xtask test-matrix` runs), or handles the generated capability table of the
//! developer guide (what `cargo xtask codegen` runs).
//!
//! Usage:
//! - `moe-matrix [--json] [--filter SUBSTRING] [--backend NAME]...`: exit 1 when any cell
//!   fails; `--backend` (repeatable, or comma-separated) runs only the cells of those backends,
//!   named even if this build does not register them (`cuda` cells on a GPU machine), so a
//!   backend that cannot run them reports skips, not silence;
//! - `moe-matrix --capability-table [--write | --check]`: print the table, write it into
//!   `docs/MOE_DEVELOPER_GUIDE.md`, or exit 1 when the committed copy is stale.

use std::process::ExitCode;

use moe_testkit::{all_cells, capabilities, cells, outcome_line, run_cells};

const USAGE: &str = "usage: moe-matrix [--json] [--filter SUBSTRING] [--backend NAME[,NAME]]... | moe-matrix --capability-table [--write | --check]";

fn main() -> ExitCode {
    let mut json = false;
    let mut filter: Option<String> = None;
    let mut backends: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--filter" => match args.next() {
                Some(f) => filter = Some(f),
                None => return usage("--filter needs a value"),
            },
            "--backend" => match args.next() {
                Some(b) => backends.extend(b.split(',').map(str::trim).filter(|b| !b.is_empty()).map(String::from)),
                None => return usage("--backend needs a value"),
            },
            "--capability-table" => return capability_table(args.next().as_deref()),
            other => return usage(&format!("unknown argument `{other}`")),
        }
    }
    let all = if backends.is_empty() {
        all_cells()
    } else {
        let names: Vec<&str> = backends.iter().map(String::as_str).collect();
        cells(&names)
    };
    let cells: Vec<_> = all
        .into_iter()
        .filter(|c| filter.as_deref().is_none_or(|f| c.id().contains(f)))
        .collect();
    let report = run_cells(&cells, |o| {
        if !json {
            println!("{}", outcome_line(o));
        }
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.summary());
    }
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn capability_table(mode: Option<&str>) -> ExitCode {
    let table = capabilities::capability_table();
    let path = capabilities::guide_path();
    match mode {
        None => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Some(mode @ ("--write" | "--check")) => {
            let doc = match std::fs::read_to_string(&path) {
                Ok(d) => d,
                Err(e) => return fail(&format!("cannot read {}: {e}", path.display())),
            };
            let Some(updated) = capabilities::splice(&doc, &table) else {
                return fail(&format!(
                    "{} lacks the markers `{}` / `{}`",
                    path.display(),
                    capabilities::BEGIN_MARKER,
                    capabilities::END_MARKER
                ));
            };
            if updated == doc {
                println!("capability table in {} is up to date", path.display());
                ExitCode::SUCCESS
            } else if mode == "--check" {
                fail(&format!(
                    "the capability table in {} is stale; run `cargo xtask codegen`",
                    path.display()
                ))
            } else if let Err(e) = std::fs::write(&path, updated) {
                fail(&format!("cannot write {}: {e}", path.display()))
            } else {
                println!("wrote the capability table into {}", path.display());
                ExitCode::SUCCESS
            }
        }
        Some(other) => usage(&format!("unknown --capability-table mode `{other}`")),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("moe-matrix: {msg}");
    ExitCode::FAILURE
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("moe-matrix: {msg}\n{USAGE}");
    ExitCode::from(2)
}
