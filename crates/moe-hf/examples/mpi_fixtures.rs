//! Every Hugging Face fixture over real MPI ranks (`mpirun -n N`): experts spread over the
//! ranks with every strategy and the fused backend, each rank a contiguous slice of the rows,
//! with and without attention-DP padding, chunked and not. Every rank checks its rows against
//! the single-rank block it builds itself and against the transformers output; exits
//! non-zero on any mismatch. Run by `cargo xtask test` under `mpirun -n 2` and `-n 4`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use moe::process_group::MpiGroup;
use moe_core::{ProcessGroup, Result, Tensor};
use moe_hf::{BlockOptions, Checkpoint, Distributed, MoeBlock};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf");

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        n += (f64::from(x) - f64::from(y)).powi(2);
        d += f64::from(y).powi(2);
    }
    (n / d.max(f64::MIN_POSITIVE)).sqrt()
}

fn io(dir: &Path, key: &str) -> Result<Tensor> {
    Checkpoint::open_file(dir.join("io.safetensors"))?
        .tensor(key)?
        .to_tensor(key)
}

fn check(
    g: &Arc<MpiGroup>,
    dir: &Path,
    backend: &str,
    comm: &str,
    chunk: Option<usize>,
    pad: bool,
) -> Result<(f64, f64)> {
    let (rank, world) = (g.rank(), g.size());
    let x = io(dir, "x_130")?;
    let t = x.rows();
    let counts: Vec<usize> = (0..world).map(|r| t / world + usize::from(r < t % world)).collect();
    let start: usize = counts[..rank].iter().sum();
    let mut single = MoeBlock::load(dir, 0, BlockOptions::default())?;
    let want = single
        .forward(&x)?
        .narrow_rows(start, counts[rank])?
        .to_f32_vec("single")?;
    let oracle = io(dir, "y_130")?
        .narrow_rows(start, counts[rank])?
        .to_f32_vec("oracle")?;
    let opts = BlockOptions {
        backend: Some(backend.into()),
        max_tokens_per_chunk: chunk,
        ..BlockOptions::default()
    };
    let dist = Distributed {
        group: g.clone() as Arc<dyn ProcessGroup>,
        comm: comm.into(),
        eplb: None,
    };
    let mut block = MoeBlock::load_distributed(dir, 0, opts, Some(dist))?;
    let got = block
        .forward_with(&x.narrow_rows(start, counts[rank])?, Some(&counts), pad)?
        .to_f32_vec("got")?;
    Ok((rel_l2(&got, &want), rel_l2(&got, &oracle)))
}

fn main() -> ExitCode {
    let g = match MpiGroup::init() {
        Ok(g) => Arc::new(g),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut names: Vec<PathBuf> = match std::fs::read_dir(FIXTURES) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.json").exists())
            .collect(),
        Err(e) => {
            eprintln!("error: fixtures at {FIXTURES}: {e}");
            return ExitCode::FAILURE;
        }
    };
    names.sort();
    let setups = [
        ("cpu", "allgather", None, false),
        ("cpu", "alltoall", Some(16), true),
        ("reference", "packed", None, false),
        ("cpu-fused", "auto", Some(16), false),
    ];
    let mut failures = Vec::new();
    for dir in &names {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (same, oracle_tol) = if name.ends_with("float32") {
            (1e-5, 1e-5)
        } else {
            (1e-2, 3e-2)
        };
        for (backend, comm, chunk, pad) in setups {
            match check(&g, dir, backend, comm, chunk, pad) {
                Ok((a, b)) if a <= same && b <= oracle_tol => {}
                Ok((a, b)) => failures.push(format!(
                    "{name} {backend}/{comm}: rel L2 {a:.2e} vs one rank, {b:.2e} vs transformers"
                )),
                Err(e) => failures.push(format!("{name} {backend}/{comm}: {e}")),
            }
        }
    }
    if failures.is_empty() {
        println!(
            "rank {} of {}: {} fixtures x {} setups match one rank and transformers",
            g.rank(),
            g.size(),
            names.len(),
            setups.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("rank {}:\n  {}", g.rank(), failures.join("\n  "));
        ExitCode::FAILURE
    }
}
