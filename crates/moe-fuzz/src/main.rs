//! `moe-fuzz --target NAME|all [--seconds S] [--seed N] [--max-input-ms M]`: fuzzes the named
//! targets one after the other and exits non-zero if any input panicked or ran past the bound
//! (the inputs are saved under `target/fuzz-findings/`). `cargo xtask fuzz` runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use moe_fuzz::{Options, TARGETS, Target};

const USAGE: &str = "usage: moe-fuzz --target NAME|all [--seconds S] [--seed N] [--max-input-ms M]\n";

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("moe-fuzz: {e}\n{USAGE}targets: {}", names());
            ExitCode::from(2)
        }
    }
}

fn names() -> String {
    TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

fn real_main() -> Result<bool, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut opts = Options {
        seconds: 10.0,
        seed: 0,
        max_input: Duration::from_secs(2),
        corpus_dir: root.join("corpus"),
        crash_dir: root.join("../../target/fuzz-findings"),
    };
    let mut targets: Vec<Target> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => {
                let v = value()?;
                if v == "all" {
                    targets = TARGETS.to_vec();
                } else {
                    targets.push(Target::by_name(&v).ok_or(format!("no target `{v}`"))?);
                }
            }
            "--seconds" => opts.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--seed" => opts.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--max-input-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--max-input-ms: {e}"))?;
                opts.max_input = Duration::from_millis(ms);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                for t in TARGETS {
                    println!("  {:<12} {}", t.name, t.what);
                }
                return Ok(true);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if targets.is_empty() {
        return Err("no --target".into());
    }
    let mut clean = true;
    for t in targets {
        let report = moe_fuzz::run(t, &opts).map_err(|e| format!("{}: reading the corpus: {e}", t.name))?;
        println!("{report}");
        for f in &report.findings {
            clean = false;
            println!("  {}: {} (input: {:?})", f.kind, f.detail, f.saved);
        }
    }
    Ok(clean)
}
