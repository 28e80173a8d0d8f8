//! Loading a kernel module for a device, first source that works:
//!
//! 1. the AOT directory's CUBIN ([`crate::cuda::aot`]: `$MOE_KERNEL_AOT_DIR`, else the GPU
//!    bundle's `kernels/`), when its manifest entry is for the device's architecture
//!    (`sm_90`, or `sm_90a` for `WGMMA` variants) and the hash of the text compiled into this
//!    build: no NVRTC and no driver JIT at all;
//! 2. the disk cache's CUBIN (`$MOE_KERNEL_CACHE`, default `<tmp>/moe-kernels-cache`), written
//!    by an earlier process, keyed by the same hash so an edited kernel never reuses a stale one;
//! 3. NVRTC compiling the text to a CUBIN for the device's real architecture (then stored in
//!    the disk cache);
//! 4. NVRTC compiling to PTX, assembled by the driver, only when step 3 failed.
//!
//! Every step passed over is logged through `tracing` with its reason, and every load is
//! recorded ([`crate::cuda::kernel_loads`]) with where it came from and the time it took.
//!
//! Sources include no CUDA headers (the NVRTC shipped with a Python wheel may not carry
//! them): bf16/f16 are handled as raw 16-bit patterns with explicit conversions and tensor-core
//! instructions are written as inline PTX, so a source compiles with nothing but NVRTC.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;
use moe_core::{MoeError, Result};

use super::device::dev_err;
use super::ffi;
use crate::cuda::aot::{self, AotMiss, Arch, KernelLoad, KernelOrigin, Manifest, Output};

/// Loads module `module` (source `src`, variant `define`) for a device of compute capability
/// `sm` in context `ctx` (named `location` in errors), through the fallback order above.
pub(crate) fn load_module(
    ctx: &Arc<CudaContext>,
    location: &str,
    module: &str,
    src: &str,
    define: Option<&str>,
    sm: u32,
) -> Result<Arc<CudaModule>> {
    let start = Instant::now();
    let key = aot::module_key(module, define);
    let arch = Arch::for_define(sm, define);
    let text = aot::module_text(define, src);
    let hash = aot::source_hash(&text, arch);
    if !aot::is_listed(module, define, sm) {
        tracing::warn!(
            "{location}: kernel module `{key}` for {arch} is not in the AOT list (moe_kernels::cuda::aot::kernel_specs), so no bundle ships it: add it there"
        );
    }
    let record = |origin: KernelOrigin, note: Option<String>| {
        aot::record_load(KernelLoad {
            key: key.clone(),
            arch,
            origin,
            ms: start.elapsed().as_secs_f64() * 1e3,
            note,
        })
    };

    // 1. Ahead of time.
    let miss = match aot_image(&key, arch, hash) {
        Ok(image) => match ctx.load_module(Ptx::from_binary(image)) {
            Ok(m) => {
                record(KernelOrigin::Aot, None);
                return Ok(m);
            }
            Err(e) => AotMiss::Unusable(format!("the driver refused it: {e}")),
        },
        Err(miss) => miss,
    };
    if miss == AotMiss::NoDirectory {
        tracing::debug!("{location}: kernel module `{key}` for {arch}: {miss}");
    } else {
        tracing::warn!("{location}: kernel module `{key}` for {arch}: {miss}; using the disk cache or NVRTC");
    }
    let mut note = miss.to_string();

    // 2. The disk cache.
    let path = cache_dir().join(format!("{}-{arch}-{hash:016x}.cubin", aot::file_stem(&key)));
    if let Ok(cubin) = std::fs::read(&path) {
        match ctx.load_module(Ptx::from_binary(cubin)) {
            Ok(m) => {
                record(KernelOrigin::DiskCache, Some(note));
                return Ok(m);
            }
            Err(e) => {
                tracing::warn!(
                    "{location}: cached CUBIN {} refused by the driver ({e}); recompiling",
                    path.display()
                );
                let _ = std::fs::remove_file(&path);
                note.push_str(&format!("; cached CUBIN refused: {e}"));
            }
        }
    }

    // 3. NVRTC to a CUBIN.
    if !ffi::nvrtc_available() {
        return Err(MoeError::Backend(
            format!(
                "{location}: kernel module `{key}` for {arch}: {note}, and no NVRTC library to compile it (on the GPU machine, source gpu-env.sh)"
            )
            .into(),
        ));
    }
    let name = format!("{}.cu", aot::file_stem(&key));
    let cubin_failure = match ffi::nvrtc_compile(&text, &name, &aot::nvrtc_options(arch, Output::Cubin), Output::Cubin)
    {
        Ok(cubin) => match ctx.load_module(Ptx::from_binary(cubin.clone())) {
            Ok(m) => {
                store(&path, &cubin);
                tracing::info!(
                    "{location}: kernel module `{key}` compiled by NVRTC for {arch} in {:.0} ms ({note})",
                    start.elapsed().as_secs_f64() * 1e3
                );
                record(KernelOrigin::Jit, Some(note));
                return Ok(m);
            }
            Err(e) => format!("the driver refused NVRTC's CUBIN: {e}"),
        },
        Err(e) => e,
    };

    // 4. PTX. Kept for a CUBIN the driver refuses (or NVRTC cannot emit for this target):
    // the PTX route is the one this crate used before CUBINs, where the driver assembles the
    // code for the device itself. A source error fails here too, with NVRTC's log.
    tracing::warn!("{location}: kernel module `{key}`: CUBIN route failed ({cubin_failure}); trying PTX");
    let ptx = ffi::nvrtc_compile(&text, &name, &aot::nvrtc_options(arch, Output::Ptx), Output::Ptx)
        .map_err(|e| MoeError::Backend(format!("NVRTC compiling `{name}` for {arch}: {e}").into()))?;
    let m = ctx
        .load_module(Ptx::from_src(String::from_utf8_lossy(&ptx).into_owned()))
        .map_err(|e| {
            dev_err(
                location,
                &format!("loading module `{key}` (PTX after: {cubin_failure})"),
                e,
            )
        })?;
    record(
        KernelOrigin::JitPtx,
        Some(format!("{note}; CUBIN route failed: {cubin_failure}")),
    );
    Ok(m)
}

/// The disk cache directory.
fn cache_dir() -> PathBuf {
    std::env::var_os("MOE_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("moe-kernels-cache"))
}

/// Writes `bytes` to `path` through a temporary file; a cache that cannot be written only
/// costs a recompilation next time.
fn store(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if path.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok()) && std::fs::write(&tmp, bytes).is_ok() {
        // Rename is atomic: concurrent processes never read a half-written file.
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The AOT directory and its manifest, read once per process.
fn aot_state() -> Option<&'static (PathBuf, std::result::Result<Manifest, String>)> {
    static STATE: OnceLock<Option<(PathBuf, std::result::Result<Manifest, String>)>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = aot::aot_dir()?;
            let manifest = std::fs::read_to_string(dir.join(aot::MANIFEST_FILE))
                .map_err(|e| format!("reading {}: {e}", dir.join(aot::MANIFEST_FILE).display()))
                .and_then(|t| Manifest::parse(&t));
            match &manifest {
                Ok(m) => tracing::info!(
                    "AOT kernels: {} ({} modules, NVRTC {}, options {})",
                    dir.display(),
                    m.entries.len(),
                    m.nvrtc,
                    m.options
                ),
                Err(e) => tracing::warn!("AOT kernels: {}: {e}; compiling at first use instead", dir.display()),
            }
            Some((dir, manifest))
        })
        .as_ref()
}

/// The inflated CUBIN of `key` for `arch` from the AOT directory, or why there is none.
fn aot_image(key: &str, arch: Arch, hash: u64) -> std::result::Result<Vec<u8>, AotMiss> {
    let Some((dir, manifest)) = aot_state() else {
        return Err(AotMiss::NoDirectory);
    };
    let manifest = manifest.as_ref().map_err(|e| AotMiss::BadManifest(e.clone()))?;
    let entry = aot::lookup(manifest, key, arch, hash)?;
    let path = dir.join(&entry.file);
    let packed = std::fs::read(&path).map_err(|e| AotMiss::Unusable(format!("reading {}: {e}", path.display())))?;
    inflate(&packed, entry.bytes).map_err(|e| AotMiss::Unusable(format!("{}: {e}", path.display())))
}

/// Raw-deflate compression of a CUBIN for the AOT directory (CUBINs shrink about 6x).
pub(crate) fn deflate(cubin: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(cubin, 9)
}

/// Inverse of [`deflate`], checked against the manifest's size.
pub(crate) fn inflate(packed: &[u8], bytes: u64) -> std::result::Result<Vec<u8>, String> {
    let limit = usize::try_from(bytes).map_err(|_| "size out of range".to_string())?;
    let cubin = miniz_oxide::inflate::decompress_to_vec_with_limit(packed, limit)
        .map_err(|e| format!("inflating: {:?}", e.status))?;
    if cubin.len() != limit {
        return Err(format!("inflated to {} bytes, the manifest says {bytes}", cubin.len()));
    }
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::CudaDevice;

    #[test]
    fn the_list_uses_the_crates_own_names_and_sources() {
        assert_eq!(aot::WGMMA, super::super::device::WGMMA_DEFINE);
        assert_eq!(aot::source_of("experts"), Some(super::super::experts::SRC));
    }

    #[test]
    fn deflate_round_trips_and_checks_the_size() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect();
        let packed = deflate(&data);
        assert!(packed.len() < data.len() / 4);
        assert_eq!(inflate(&packed, data.len() as u64).unwrap(), data);
        assert!(inflate(&packed, data.len() as u64 - 1).is_err());
        assert!(inflate(&packed, data.len() as u64 + 1).is_err());
        assert!(inflate(b"not deflate", 10).is_err());
    }

    /// Every listed module of sm_90 (plain and `sm_90a`) compiles to a CUBIN. Needs an NVRTC
    /// library, as every test of `enabled/` needs the GPU machine's environment: there it is
    /// gpu-env.sh's; without a GPU, the nvidia-cuda-nvrtc wheel's `lib/` on `LD_LIBRARY_PATH`
    /// (`cargo xtask kernels` unpacks it into `target/nvrtc/nvidia/cu13/lib`). About 2 minutes
    /// on 2 cores, 20 s on 16.
    #[test]
    fn every_listed_module_compiles_to_a_cubin_for_sm_90() {
        assert!(
            ffi::nvrtc_available(),
            "no NVRTC library: put the nvidia-cuda-nvrtc wheel's lib/ on LD_LIBRARY_PATH (`cargo xtask kernels` unpacks it into target/nvrtc/nvidia/cu13/lib)"
        );
        let specs = aot::kernel_specs(90);
        let built = super::super::aot_build::compile_all(&specs, super::super::aot_build::default_jobs()).unwrap();
        assert_eq!(built.len(), specs.len());
        for (spec, cubin) in specs.iter().zip(&built) {
            // An ELF image.
            assert_eq!(&cubin[..4], b"\x7fELF", "{}", spec.key());
        }
        assert_eq!(specs.iter().filter(|s| s.arch.to_string() == "sm_90a").count(), 8);
    }

    /// On the GPU machine, from the bundle (whose `kernels/` it finds beside `bin/tests/`):
    /// every listed module of the device's architecture loads from the AOT directory, with no
    /// NVRTC and no fallback.
    #[test]
    fn aot_kernels_load_on_the_device() {
        let dev = CudaDevice::new(0).unwrap();
        let dir = aot::aot_dir().unwrap_or_else(|| {
            panic!(
                "no AOT kernel directory: run the bundle's bin/tests/moe-kernels-lib, or set {}",
                aot::AOT_DIR_ENV
            )
        });
        assert!(
            aot::AOT_SMS.contains(&dev.sm()),
            "sm_{} is not an AOT architecture ({:?})",
            dev.sm(),
            aot::AOT_SMS
        );
        let specs = aot::kernel_specs(dev.sm());
        for spec in &specs {
            let src = spec.source().unwrap();
            let before = aot::kernel_loads().len();
            load_module(
                dev.context(),
                &dev.location(),
                spec.module,
                src,
                spec.define.as_deref(),
                dev.sm(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", spec.key()));
            let loads = aot::kernel_loads();
            let load = loads[before..].iter().rfind(|l| l.key == spec.key()).unwrap();
            assert_eq!(
                load.origin,
                KernelOrigin::Aot,
                "{} from {}: {:?}",
                spec.key(),
                dir.display(),
                load.note
            );
        }
    }
}
