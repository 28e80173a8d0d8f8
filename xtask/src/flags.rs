//! Command-line flags of `cargo xtask`, parsed by hand: the commands take a handful of flags
//! each, and a parser dependency would be rebuilt by every CI run for no gain.

use std::path::PathBuf;

use anyhow::{Result, bail};

pub const USAGE: &str = "\
usage: cargo xtask <command> [flags]

commands:
  test                       nextest over the workspace, test-matrix, the mpirun leg, check-boundaries
  test-mpi                   only the multi-process leg (mpirun -n 2 and -n 4; needs Open MPI)
  test-matrix [--json] [--filter S]
                             run the backend x dtype x routing x shape x chunking matrix
  check-boundaries [--root DIR] [--list]
                             check the crate graph, external-crate owners and source rules
  codegen [--check]          regenerate the generated sections of docs/ (--check: fail if stale)
  fuzz [--target NAME|all] [--seconds S] [--seed N] [--max-input-ms M]
                             fuzz the input parsers (crates/moe-fuzz; default all targets, 60 s each)
  bench                      run the CPU benchmark table and the candle peer; rewrite docs/BENCHMARKS.md
  gpu-bundle [--no-kernels]  build the CUDA binaries, test binaries, AOT kernels, fixtures, torch baseline
                             and run.sh into target/gpu-bundle/ for a GPU machine (run.sh tests|matrix|bench|baseline|all)
  kernels [--arch sm_89,sm_90] [--out DIR] [--jobs N]
                             compile every CUDA kernel module to CUBINs with NVRTC (no GPU; default
                             target/aot-kernels/); gpu-bundle puts them in its kernels/
";

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Test,
    TestMpi,
    TestMatrix { json: bool, filter: Option<String> },
    CheckBoundaries { root: Option<PathBuf>, list: bool },
    Codegen { check: bool },
    GpuBundle { kernels: bool },
    Help,
}

pub fn parse(args: &[String]) -> Result<Command> {
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let mut rest = rest.iter();
    let command = match cmd.as_str() {
        "test" => Command::Test,
        "test-mpi" => Command::TestMpi,
        "gpu-bundle" => {
            let mut kernels = true;
            for flag in rest.by_ref() {
                match flag.as_str() {
                    "--no-kernels" => kernels = false,
                    other => bail!("gpu-bundle: unknown flag `{other}`\n\n{USAGE}"),
                }
            }
            return Ok(Command::GpuBundle { kernels });
        }
        "test-matrix" => {
            let (mut json, mut filter) = (false, None);
            while let Some(flag) = rest.next() {
                match flag.as_str() {
                    "--json" => json = true,
                    "--filter" => filter = Some(value(flag, rest.next())?),
                    other => bail!("test-matrix: unknown flag `{other}`\n\n{USAGE}"),
                }
            }
            return Ok(Command::TestMatrix { json, filter });
        }
        "check-boundaries" => {
            let (mut root, mut list) = (None, false);
            while let Some(flag) = rest.next() {
                match flag.as_str() {
                    "--root" => root = Some(PathBuf::from(value(flag, rest.next())?)),
                    "--list" => list = true,
                    other => bail!("check-boundaries: unknown flag `{other}`\n\n{USAGE}"),
                }
            }
            return Ok(Command::CheckBoundaries { root, list });
        }
        "codegen" => {
            let mut check = false;
            for flag in rest.by_ref() {
                match flag.as_str() {
                    "--check" => check = true,
                    other => bail!("codegen: unknown flag `{other}`\n\n{USAGE}"),
                }
            }
            return Ok(Command::Codegen { check });
        }
        "help" | "--help" | "-h" => Command::Help,
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    };
    if let Some(extra) = rest.next() {
        bail!("{cmd}: unexpected argument `{extra}`\n\n{USAGE}");
    }
    Ok(command)
}

fn value(flag: &str, v: Option<&String>) -> Result<String> {
    match v {
        Some(v) if !v.starts_with("--") => Ok(v.clone()),
        _ => bail!("{flag} needs a value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(parse(&args("test")).unwrap(), Command::Test);
        assert_eq!(
            parse(&args("check-boundaries --root /tmp/x")).unwrap(),
            Command::CheckBoundaries {
                root: Some("/tmp/x".into()),
                list: false
            }
        );
        assert_eq!(
            parse(&args("test-matrix --json --filter cpu")).unwrap(),
            Command::TestMatrix {
                json: true,
                filter: Some("cpu".into())
            }
        );
        assert_eq!(
            parse(&args("codegen --check")).unwrap(),
            Command::Codegen { check: true }
        );
        assert_eq!(
            parse(&args("gpu-bundle")).unwrap(),
            Command::GpuBundle { kernels: true }
        );
        assert_eq!(
            parse(&args("gpu-bundle --no-kernels")).unwrap(),
            Command::GpuBundle { kernels: false }
        );
        assert!(parse(&args("gpu-bundle --x")).is_err());
        assert_eq!(parse(&[]).unwrap(), Command::Help);
    }

    #[test]
    fn rejects_unknown_input() {
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&args("check-boundaries --root")).is_err());
        assert!(parse(&args("test extra")).is_err());
    }
}
