//! Building the AOT kernel directory: every module of [`aot::kernel_specs`] for each
//! architecture, compiled by NVRTC to a CUBIN (no GPU needed), raw-deflate compressed, with the
//! [`aot::MANIFEST_FILE`] that the loader (`compile.rs`) checks entries against. Run by
//! `cargo xtask kernels` and `cargo xtask gpu-bundle` through the `aot-kernels` example.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use moe_core::{MoeError, Result};

use super::compile::deflate;
use super::ffi;
use crate::cuda::aot::{self, KernelSpec, Manifest, ManifestEntry, Output};

/// What [`build_aot_kernels`] wrote.
#[derive(Clone, Debug)]
pub struct AotBuild {
    pub modules: usize,
    /// Bytes of the CUBINs, and of the files written (compressed).
    pub cubin_bytes: u64,
    pub packed_bytes: u64,
    /// NVRTC's `major.minor`.
    pub nvrtc: String,
    pub seconds: f64,
}

/// Compiler threads for the tests: one per core (each NVRTC compilation is single-threaded).
#[cfg(test)]
pub(crate) fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Compiles one module to a CUBIN.
fn compile_one(spec: &KernelSpec) -> Result<Vec<u8>> {
    let src = spec
        .source()
        .ok_or_else(|| MoeError::Backend(format!("no source for module `{}`", spec.module).into()))?;
    let text = aot::module_text(spec.define.as_deref(), src);
    let name = format!("{}.cu", aot::file_stem(&spec.key()));
    ffi::nvrtc_compile(
        &text,
        &name,
        &aot::nvrtc_options(spec.arch, Output::Cubin),
        Output::Cubin,
    )
    .map_err(|e| MoeError::Backend(format!("NVRTC compiling `{}` for {}: {e}", spec.key(), spec.arch).into()))
}

/// The CUBINs of `specs`, in order, compiled on `jobs` threads; the first failure is returned.
pub(crate) fn compile_all(specs: &[KernelSpec], jobs: usize) -> Result<Vec<Vec<u8>>> {
    if !ffi::nvrtc_available() {
        return Err(MoeError::Backend(
            "no NVRTC library found (put the nvidia-cuda-nvrtc wheel's lib/ on LD_LIBRARY_PATH)".into(),
        ));
    }
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Vec<u8>>>>> = Mutex::new(specs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, specs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(spec) = specs.get(i) else { break };
                    let t = Instant::now();
                    let r = compile_one(spec);
                    if let Ok(c) = &r {
                        eprintln!(
                            "aot-kernels: {} for {}: {:.1} s, {:.2} MB",
                            spec.key(),
                            spec.arch,
                            t.elapsed().as_secs_f64(),
                            c.len() as f64 / 1e6
                        );
                    }
                    let failed = r.is_err();
                    out.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
                    if failed {
                        // Stop handing out work; the threads finish what they hold.
                        next.store(specs.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut cubins = Vec::with_capacity(specs.len());
    for r in out.into_inner().unwrap_or_else(|p| p.into_inner()) {
        match r {
            Some(Ok(c)) => cubins.push(c),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if cubins.len() != specs.len() {
        return Err(MoeError::Backend("a module was not compiled".into()));
    }
    Ok(cubins)
}

/// Compiles every module of [`aot::kernel_specs`] for each of `sms` into `out` (created; its
/// earlier manifest and `*.cubin.deflate` files are removed first) and writes the manifest last.
pub fn build_aot_kernels(out: &Path, sms: &[u32], jobs: usize) -> Result<AotBuild> {
    let start = Instant::now();
    let io = |what: &str, e: std::io::Error| MoeError::Backend(format!("{what}: {e}").into());
    let nvrtc = ffi::nvrtc_version().ok_or_else(|| {
        MoeError::Backend("no NVRTC library found (put the nvidia-cuda-nvrtc wheel's lib/ on LD_LIBRARY_PATH)".into())
    })?;
    let specs: Vec<KernelSpec> = sms.iter().flat_map(|&sm| aot::kernel_specs(sm)).collect();
    let cubins = compile_all(&specs, jobs)?;
    std::fs::create_dir_all(out).map_err(|e| io(&format!("creating {}", out.display()), e))?;
    for entry in std::fs::read_dir(out).map_err(|e| io(&format!("reading {}", out.display()), e))? {
        let p = entry.map_err(|e| io("listing", e))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == aot::MANIFEST_FILE || name.ends_with(".cubin.deflate") {
            std::fs::remove_file(&p).map_err(|e| io(&format!("removing {}", p.display()), e))?;
        }
    }
    let mut manifest = Manifest {
        nvrtc: nvrtc.clone(),
        options: aot::OPTIONS_VERSION.into(),
        entries: Vec::new(),
    };
    let (mut cubin_bytes, mut packed_bytes) = (0u64, 0u64);
    for (spec, cubin) in specs.iter().zip(&cubins) {
        let src = spec.source().unwrap_or_default();
        let text = aot::module_text(spec.define.as_deref(), src);
        let file = format!("{}.{}.cubin.deflate", aot::file_stem(&spec.key()), spec.arch);
        let packed = deflate(cubin);
        std::fs::write(out.join(&file), &packed).map_err(|e| io(&format!("writing {file}"), e))?;
        cubin_bytes += cubin.len() as u64;
        packed_bytes += packed.len() as u64;
        manifest.entries.push(ManifestEntry {
            key: spec.key(),
            arch: spec.arch,
            hash: aot::source_hash(&text, spec.arch),
            file,
            bytes: cubin.len() as u64,
        });
    }
    let path = out.join(aot::MANIFEST_FILE);
    std::fs::write(&path, manifest.render()).map_err(|e| io(&format!("writing {}", path.display()), e))?;
    Ok(AotBuild {
        modules: specs.len(),
        cubin_bytes,
        packed_bytes,
        nvrtc,
        seconds: start.elapsed().as_secs_f64(),
    })
}
