//! `cargo xtask kernels [--arch sm_89,sm_90] [--out DIR] [--jobs N]`: every CUDA kernel module
//! compiled ahead of time to CUBINs, with their manifest, for the GPU bundle (`gpu-bundle` runs
//! it into `target/gpu-bundle/kernels/`; the default `--out` is `target/aot-kernels/`).
//!
//! NVRTC runs without a GPU. It is found, in order: `$MOE_NVRTC_DIR` (a directory holding
//! `libnvrtc.so.13`), `target/nvrtc/nvidia/cu13/lib` from an earlier run, else fetched there:
//! `python3 -m pip download --no-deps` of [`NVRTC_WHEEL`], its `lib/` unpacked, the wheel
//! deleted. The compiler is moe-kernels' `aot-kernels` example, built in release with `cuda`
//! (the same artifacts as the bundle's) and run with that directory on `LD_LIBRARY_PATH`.
//! Which modules and architectures, the manifest's format and how the loader checks entries:
//! `moe_kernels::cuda::aot`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// NVRTC of the CUDA version the GPU machine's driver supports (13.0): its CUBINs load there.
pub const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc==13.0.88";
/// The library cudarc opens (CUDA 13 bindings).
const NVRTC_LIB: &str = "libnvrtc.so.13";
/// Architectures by default: `moe_kernels::cuda::aot::AOT_SMS` (sm_90 includes sm_90a).
pub const DEFAULT_ARCH: &str = "sm_89,sm_90";

/// `cargo xtask kernels ...`.
pub fn run(root: &Path, args: &[String]) -> Result<bool> {
    let (mut arch, mut out, mut jobs) = (DEFAULT_ARCH.to_string(), None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .filter(|v| !v.starts_with("--"))
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--arch" => arch = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--jobs" => jobs = Some(value()?.parse::<usize>().context("--jobs")?),
            other => bail!("kernels: unknown flag `{other}`\n\n{}", crate::flags::USAGE),
        }
    }
    let out = out.unwrap_or_else(|| crate::gpu_bundle::target_dir(root).join("aot-kernels"));
    build(root, &out, &arch, jobs)?;
    Ok(true)
}

/// Compiles every module for `arch` (comma-separated) into `out`.
pub fn build(root: &Path, out: &Path, arch: &str, jobs: Option<usize>) -> Result<()> {
    let lib = nvrtc_dir(root)?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "moe-kernels",
            "--features",
            "moe-kernels/cuda",
            "--example",
            "aot-kernels",
            "--",
            "--arch",
            arch,
            "--out",
        ])
        .arg(out)
        // The bundle's release build is made without debug info: reuse its artifacts.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if let Some(j) = jobs {
        cmd.args(["--jobs", &j.to_string()]);
    }
    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(p) if !p.is_empty() => {
            let mut s = lib.clone().into_os_string();
            s.push(":");
            s.push(p);
            s
        }
        _ => lib.clone().into_os_string(),
    };
    cmd.env("LD_LIBRARY_PATH", path);
    eprintln!(
        "kernels: compiling for {arch} into {} (NVRTC from {})",
        out.display(),
        lib.display()
    );
    let status = cmd.status().context("starting cargo run --example aot-kernels")?;
    if !status.success() {
        bail!("the aot-kernels example failed ({status})");
    }
    Ok(())
}

/// The directory holding NVRTC (see the module docs), fetched when there is none.
fn nvrtc_dir(root: &Path) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MOE_NVRTC_DIR") {
        let d = PathBuf::from(d);
        if !d.join(NVRTC_LIB).is_file() {
            bail!("MOE_NVRTC_DIR={} holds no {NVRTC_LIB}", d.display());
        }
        return Ok(d);
    }
    let base = crate::gpu_bundle::target_dir(root).join("nvrtc");
    let lib = base.join("nvidia/cu13/lib");
    if lib.join(NVRTC_LIB).is_file() {
        return Ok(lib);
    }
    eprintln!("kernels: fetching {NVRTC_WHEEL} into {}", base.display());
    std::fs::create_dir_all(&base)?;
    let ok = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            NVRTC_WHEEL,
            "-d",
        ])
        .arg(&base)
        .status()
        .context("starting python3 -m pip download")?
        .success();
    if !ok {
        bail!(
            "could not download {NVRTC_WHEEL}; set MOE_NVRTC_DIR to a directory holding {NVRTC_LIB}, or pass --no-kernels to gpu-bundle"
        );
    }
    // Unpack the libraries only, then drop the wheel.
    let unpack = "import glob, sys, zipfile\n\
        base = sys.argv[1]\n\
        for w in glob.glob(base + '/nvidia_cuda_nvrtc-*.whl'):\n\
        \x20   z = zipfile.ZipFile(w)\n\
        \x20   z.extractall(base, [n for n in z.namelist() if '/lib/' in n])\n";
    let ok = Command::new("python3")
        .args(["-c", unpack])
        .arg(&base)
        .status()
        .context("starting python3 to unpack the wheel")?
        .success();
    for entry in std::fs::read_dir(&base)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "whl") {
            std::fs::remove_file(&p)?;
        }
    }
    if !ok || !lib.join(NVRTC_LIB).is_file() {
        bail!("unpacking {NVRTC_WHEEL} gave no {}", lib.join(NVRTC_LIB).display());
    }
    Ok(lib)
}
