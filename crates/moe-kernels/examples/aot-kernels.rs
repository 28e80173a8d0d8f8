//! Compiles every CUDA kernel module ahead of time (NVRTC, no GPU needed) into a directory the
//! loader reads before compiling anything (see `moe_kernels::cuda::aot`):
//!
//! `aot-kernels --out DIR [--arch sm_89,sm_90] [--jobs N]`
//!
//! Run by `cargo xtask kernels` and `cargo xtask gpu-bundle`, which find NVRTC for it.

use std::path::PathBuf;
use std::process::ExitCode;

use moe_kernels::cuda::aot::{AOT_SMS, Arch};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut out, mut sms, mut jobs) = (
        None,
        AOT_SMS.to_vec(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--out", Some(v)) => out = Some(PathBuf::from(v)),
            ("--arch", Some(v)) => {
                let parsed: Option<Vec<u32>> = v.split(',').map(|a| Arch::parse(a).map(|a| a.sm)).collect();
                match parsed {
                    Some(mut list) => {
                        list.dedup();
                        sms = list;
                    }
                    None => {
                        eprintln!("aot-kernels: bad --arch `{v}` (expected e.g. sm_89,sm_90)");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ("--jobs", Some(v)) => match v.parse() {
                Ok(n) => jobs = n,
                Err(_) => {
                    eprintln!("aot-kernels: bad --jobs `{v}`");
                    return ExitCode::FAILURE;
                }
            },
            (other, _) => {
                eprintln!(
                    "aot-kernels: unknown or incomplete flag `{other}`\nusage: aot-kernels --out DIR [--arch sm_89,sm_90] [--jobs N]"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(out) = out else {
        eprintln!("aot-kernels: --out DIR is required");
        return ExitCode::FAILURE;
    };
    match moe_kernels::cuda::build_aot_kernels(&out, &sms, jobs) {
        Ok(b) => {
            println!(
                "aot-kernels: {} modules for {} into {} in {:.0} s with NVRTC {}: {:.1} MiB of CUBINs, {:.1} MiB written",
                b.modules,
                sms.iter().map(|s| format!("sm_{s}")).collect::<Vec<_>>().join(","),
                out.display(),
                b.seconds,
                b.nvrtc,
                b.cubin_bytes as f64 / (1u64 << 20) as f64,
                b.packed_bytes as f64 / (1u64 << 20) as f64
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("aot-kernels: {e}");
            ExitCode::FAILURE
        }
    }
}
