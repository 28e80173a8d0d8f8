//! NVRTC: CUDA C sources compiled to PTX for the device's architecture at first use.
//!
//! Sources include no CUDA headers (the NVRTC shipped with a Python wheel may not carry
//! them): bf16/f16 are handled as raw 16-bit patterns with explicit conversions and tensor-core
//! instructions are written as inline PTX, so a source compiles with nothing but NVRTC.

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use moe_core::{MoeError, Result};

/// Compiles `src` (module `name`) for `sm_<sm>`, or reads the PTX an earlier process wrote
/// for the same source and architecture; the error carries NVRTC's log.
///
/// The disk cache (`$MOE_KERNEL_CACHE`, default `<tmp>/moe-kernels-ptx`) is keyed by a hash of
/// the source, the options and the architecture, so an edited kernel never reuses stale PTX.
/// A cache that cannot be read or written only costs a recompilation.
pub(crate) fn compile_module(name: &str, src: &str, sm: u32, arch_specific: bool) -> Result<Ptx> {
    let dir = std::env::var_os("MOE_KERNEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("moe-kernels-ptx"));
    let key = fnv1a(&[
        src.as_bytes(),
        OPTIONS_VERSION.as_bytes(),
        &sm.to_le_bytes(),
        &[u8::from(arch_specific)],
    ]);
    let path = dir.join(format!("{name}-sm{sm}-{key:016x}.ptx"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(Ptx::from_src(text));
    }
    let ptx = compile_fresh(name, src, sm, arch_specific)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&tmp, ptx.to_src()).is_ok() {
        // Rename is atomic: concurrent processes never read a half-written file.
        let _ = std::fs::rename(&tmp, &path);
    }
    Ok(ptx)
}

/// Bumped whenever the options below change.
const OPTIONS_VERSION: &str = "v1";

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn compile_fresh(name: &str, src: &str, sm: u32, arch_specific: bool) -> Result<Ptx> {
    let opts = CompileOptions {
        // Exact IEEE division/sqrt and no flush-to-zero: routing must tie-break and round like
        // the CPU reference.
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        // PTX for the virtual architecture; the driver assembles it for the device at load.
        options: vec![
            format!(
                "--gpu-architecture=compute_{sm}{}",
                if arch_specific { "a" } else { "" }
            ),
            "--std=c++17".into(),
        ],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts)
        .map_err(|e| MoeError::Backend(format!("NVRTC compiling `{name}.cu` for sm_{sm}: {e}").into()))
}
