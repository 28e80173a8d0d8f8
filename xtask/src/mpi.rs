//! The multi-process leg of `cargo xtask test`: builds the MPI-enabled examples and `moe`
//! binary, then runs them under `mpirun -n 2` and `-n 4` (Open MPI; CI installs it):
//! collectives with a stalled rank, the layer with every strategy and dynamic EPLB, every HF
//! fixture over ranks, and `moe run` itself, whose gathered `y` is compared with the fixture.
//! Without `mpirun` on PATH the leg fails with instructions rather than skipping silently.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const RANKS: [&str; 2] = ["2", "4"];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn ok(cmd: &mut Command) -> Result<bool> {
    let shown = format!("{cmd:?}");
    Ok(cmd.status().with_context(|| format!("starting {shown}"))?.success())
}

/// `mpirun -n N` with the flags a CI container needs (root, more ranks than cores).
fn mpirun(n: &str) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", n]);
    cmd
}

/// Builds the MPI targets; returns the binaries' directory.
fn build(root: &Path) -> Result<bool> {
    let targets: [&[&str]; 4] = [
        &["-p", "moe-comm", "--features", "mpi", "--example", "mpi-collectives"],
        &["-p", "moe", "--features", "mpi", "--example", "mpi-layer"],
        &["-p", "moe-hf", "--features", "mpi", "--example", "mpi-fixtures"],
        &["-p", "moe-cli", "--features", "mpi", "--bin", "moe"],
    ];
    for t in targets {
        if !ok(cargo().current_dir(root).args(["build", "--profile", "test"]).args(t))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `[T, H]` float values of tensor `key` of a safetensors file (f32 or bf16).
fn read_floats(path: &Path, key: &str) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let n = u64::from_le_bytes(bytes.get(..8).context("short file")?.try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n).context("short header")?)?;
    let t = &header[key];
    let (start, end) = (
        t["data_offsets"][0].as_u64().context("offsets")? as usize,
        t["data_offsets"][1].as_u64().context("offsets")? as usize,
    );
    let data = bytes.get(8 + n + start..8 + n + end).context("data out of range")?;
    Ok(match t["dtype"].as_str() {
        Some("F32") => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Some("BF16") => data
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        other => bail!("tensor `{key}` of {}: dtype {other:?}", path.display()),
    })
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        n += (f64::from(x) - f64::from(y)).powi(2);
        d += f64::from(y).powi(2);
    }
    if a.len() != b.len() {
        f64::INFINITY
    } else {
        (n / d.max(f64::MIN_POSITIVE)).sqrt()
    }
}

/// `mpirun -n N moe run --model F ...` and compare rank 0's gathered `y` with `y_130`.
fn cli_run(bin: &Path, fixture: &Path, n: &str, comm: &str, out: &Path) -> Result<bool> {
    let io = fixture.join("io.safetensors");
    let ran = ok(mpirun(n)
        .arg(bin)
        .args(["run", "--model"])
        .arg(fixture)
        .arg("--input")
        .arg(&io)
        .args(["--input-key", "x_130", "--comm", comm, "--output"])
        .arg(out))?;
    if !ran {
        return Ok(false);
    }
    let err = rel_l2(&read_floats(out, "y")?, &read_floats(&io, "y_130")?);
    let tol = if fixture.to_string_lossy().ends_with("float32") {
        1e-5
    } else {
        3e-2
    };
    println!(
        "mpirun -n {n} moe run {} --comm {comm}: rel L2 {err:.2e} (bound {tol:.0e})",
        fixture.display()
    );
    Ok(err <= tol)
}

/// The leg.
pub fn mpi_leg(root: &Path) -> Result<bool> {
    if Command::new("mpirun").arg("--version").output().is_err() {
        bail!(
            "`mpirun` is not on PATH: install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev)"
        );
    }
    if !build(root)? {
        return Ok(false);
    }
    let bins = root.join("target/debug");
    let fixtures = root.join("crates/moe-testkit/fixtures/hf");
    let scratch: PathBuf = std::env::temp_dir().join(format!("moe-xtask-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let mut all = true;
    for n in RANKS {
        for example in ["mpi-collectives", "mpi-layer", "mpi-fixtures"] {
            all &= ok(mpirun(n).arg(bins.join("examples").join(example)))?;
        }
        for (fixture, comm) in [
            ("qwen3_moe-float32", "alltoall"),
            ("gpt_oss-bfloat16", "packed"),
            ("llama4-float32", "allgather"),
        ] {
            let out = scratch.join(format!("y-{n}-{fixture}.safetensors"));
            all &= cli_run(&bins.join("moe"), &fixtures.join(fixture), n, comm, &out)?;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(all)
}
