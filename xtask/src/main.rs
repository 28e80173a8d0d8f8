//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `test`: the workspace tests (nextest), the backend matrix, the multi-process runs under
//!   `mpirun`, the boundary checks;
//! - `test-matrix`: moe-testkit's matrix, one line per cell;
//! - `check-boundaries`: the architecture rules of `docs/ARCHITECTURE.md`;
//! - `codegen`: generated sections of `docs/`.
//! - `bench`: the benchmark table of `docs/BENCHMARKS.md`, ours next to candle's (`bench.rs`);
//! - `fuzz`: the long run of the stable-Rust fuzzer, `crates/moe-fuzz` (`fuzz.rs`);
//! - `gpu-bundle`: the CUDA build, test binaries, AOT kernels, fixtures and scripts a GPU
//!   machine runs (`gpu_bundle.rs`);
//! - `kernels`: every CUDA kernel module compiled to CUBINs by NVRTC, no GPU (`kernels.rs`).

mod bench;
mod boundaries;
mod flags;
mod fuzz;
mod gpu_bundle;
mod kernels;
mod legs;
mod mpi;
mod python;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use flags::Command;

/// The workspace root (xtask lives one level below it).
pub fn project_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok(false)` when it ran and found failures.
fn run(args: &[String]) -> Result<bool> {
    // `bench` parses its own flags (most go through to `moe bench`): see bench.rs.
    if let Some(("bench", rest)) = args.split_first().map(|(c, r)| (c.as_str(), r)) {
        return bench::run(&project_root(), rest);
    }
    // `kernels` parses its own flags: see kernels.rs.
    if let Some(("kernels", rest)) = args.split_first().map(|(c, r)| (c.as_str(), r)) {
        return kernels::run(&project_root(), rest);
    }
    // `fuzz` passes its flags to the moe-fuzz binary: see fuzz.rs.
    if let Some(("fuzz", rest)) = args.split_first().map(|(c, r)| (c.as_str(), r)) {
        return fuzz::run(&project_root(), rest);
    }
    match flags::parse(args)? {
        Command::Help => {
            print!("{}", flags::USAGE);
            Ok(true)
        }
        Command::CheckBoundaries { root, list } => {
            if list {
                for r in boundaries::rules() {
                    println!("{:<30} {}", r.id, r.what);
                }
                return Ok(true);
            }
            check_boundaries(&root.unwrap_or_else(project_root))
        }
        Command::TestMatrix { json, filter } => legs::test_matrix(&project_root(), json, filter.as_deref()),
        Command::Codegen { check } => legs::codegen(&project_root(), check),
        Command::Test => legs::test(&project_root()),
        Command::TestMpi => mpi::mpi_leg(&project_root()),
        Command::GpuBundle { kernels } => gpu_bundle::run(&project_root(), kernels),
    }
}

/// Prints every violation under `root`; `Ok(false)` if there is any.
pub fn check_boundaries(root: &Path) -> Result<bool> {
    let violations = boundaries::check(root)?;
    for v in &violations {
        println!("{v}");
    }
    if violations.is_empty() {
        println!("check-boundaries: ok ({} rules)", boundaries::rules().len());
        Ok(true)
    } else {
        println!("check-boundaries: {} violation(s)", violations.len());
        Ok(false)
    }
}
