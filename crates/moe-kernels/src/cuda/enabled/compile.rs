//! NVRTC: CUDA C sources compiled to PTX for the device's architecture at first use.
//!
//! Sources include no CUDA headers (the NVRTC shipped with a Python wheel may not carry
//! them): bf16/f16 are handled as raw 16-bit patterns with explicit conversions and tensor-core
//! instructions are written as inline PTX, so a source compiles with nothing but NVRTC.

use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use moe_core::{MoeError, Result};

/// Compiles `src` (module `name`) for `sm_<sm>`; the error carries NVRTC's log.
pub(crate) fn compile_module(name: &str, src: &str, sm: u32) -> Result<Ptx> {
    let opts = CompileOptions {
        // Exact IEEE division/sqrt and no flush-to-zero: routing must tie-break and round like
        // the CPU reference.
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        // PTX for the virtual architecture; the driver assembles it for the device at load.
        options: vec![format!("--gpu-architecture=compute_{sm}"), "--std=c++17".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts)
        .map_err(|e| MoeError::Backend(format!("NVRTC compiling `{name}.cu` for sm_{sm}: {e}").into()))
}
