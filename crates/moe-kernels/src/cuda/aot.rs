//! Ahead-of-time kernels: the list of every CUDA module the crate can request, the text NVRTC
//! compiles for each, the manifest of the compiled CUBINs the GPU bundle ships, the decision to
//! use one of them, and the log of where each loaded module came from.
//!
//! Pure code, compiled with and without the `cuda` feature so its tests (the list against the
//! call sites and the sources, manifest parsing, the fallback decisions) run everywhere; the
//! NVRTC and driver side is `enabled/compile.rs` (loading) and `enabled/aot_build.rs`
//! (`cargo xtask kernels`).
//!
//! A module is `(module, define)`: one NVRTC compilation of a source (`kernels/*.cu`) with the
//! words of `define` prepended as `#define`s, keyed `module/define` (`experts/VARIANT_bf16_fp8b
//! WGMMA`), exactly as `CudaDevice::function_variant` requests it. A define holding [`WGMMA`]
//! is compiled for the architecture-specific target (`sm_90a`), the others for the device's
//! plain architecture (`sm_89`, `sm_90`).
//!
//! Fallback order at load (`enabled/compile.rs`): the AOT directory's CUBIN when its entry is for
//! the device's architecture and the hash of the compiled-in text; else the disk cache's CUBIN;
//! else NVRTC to a CUBIN (stored in the disk cache); else NVRTC to PTX (the driver assembles it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The define that selects architecture-specific code (Hopper's wgmma); the same word as
/// `device::WGMMA_DEFINE` (tested in `enabled/compile.rs`).
pub const WGMMA: &str = "WGMMA";

/// Architectures the kernels are shipped for ahead of time: Ada (`sm_89`, the first with the
/// E4M3 conversions every FP8 path uses; sm_80 fails to compile `VARIANT_common`) and Hopper
/// (`sm_90`, plus `sm_90a` for the `WGMMA` variants, which only compute capability 9.0 runs:
/// `CudaDevice::has_wgmma`). The backend's gate (`MIN_SM` in moe-backends) is sm_89 for the
/// same reason; the project has run on sm_90 only (H100, H200).
pub const AOT_SMS: &[u32] = &[89, 90];

/// Bumped whenever [`nvrtc_options`] change: part of every source hash.
pub const OPTIONS_VERSION: &str = "v2";

/// Name of the manifest in an AOT directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// First line of a manifest of this format.
const MANIFEST_HEADER: &str = "# moe-kernels AOT kernels v1";

/// The sources of the expert module in the order `enabled/experts.rs` concatenates them
/// (`SRC`; tested against it in `enabled/compile.rs` and against the file here).
const EXPERTS_SRC: &str = concat!(
    include_str!("kernels/experts/formats.cu"),
    include_str!("kernels/experts/permute.cu"),
    include_str!("kernels/experts/qdq.cu"),
    include_str!("kernels/experts/gemv.cu"),
    include_str!("kernels/experts/mma.cu"),
    include_str!("kernels/experts/wgmma.cu"),
    include_str!("kernels/experts/tma.cu"),
    include_str!("kernels/experts/finalize.cu"),
    include_str!("kernels/experts/entry.cu"),
    include_str!("kernels/experts/fp8.cu"),
);

/// Every module name the CUDA layer compiles, with its source (each file's `MODULE` and `SRC`).
const MODULES: &[(&str, &str)] = &[
    ("routing", include_str!("kernels/routing.cu")),
    ("rows", include_str!("kernels/rows.cu")),
    ("comm_rows", include_str!("kernels/comm_rows.cu")),
    ("experts", EXPERTS_SRC),
];

/// Activation dtypes x weight formats of the expert GEMM variants (`VARIANT_<dt>_<fmt>`, as
/// `DeviceExperts::variant` names them; f32 activations only with float weights).
const EXPERT_VARIANTS: &[(&str, &str)] = &[
    ("f32", "float"),
    ("bf16", "float"),
    ("bf16", "fp8t"),
    ("bf16", "fp8b"),
    ("bf16", "mxfp4"),
    ("f16", "float"),
    ("f16", "fp8t"),
    ("f16", "fp8b"),
    ("f16", "mxfp4"),
];

/// The expert variant of the permutation, quantization and finalize kernels.
const EXPERTS_COMMON: &str = "VARIANT_common";

/// A compilation target: `sm_<sm>`, or `sm_<sm>a` for architecture-specific code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    /// Compute capability as `major * 10 + minor`.
    pub sm: u32,
    /// The `a` target (instructions of this architecture only, such as wgmma).
    pub specific: bool,
}

impl Arch {
    /// The target of a module with `define` on a device of compute capability `sm`.
    pub fn for_define(sm: u32, define: Option<&str>) -> Arch {
        Arch {
            sm,
            specific: define.is_some_and(|d| d.split_whitespace().any(|w| w == WGMMA)),
        }
    }

    /// Parses `sm_90` / `sm_90a` (also `90`, `90a`).
    pub fn parse(s: &str) -> Option<Arch> {
        let s = s.trim();
        let s = s.strip_prefix("sm_").unwrap_or(s);
        let (digits, specific) = match s.strip_suffix('a') {
            Some(d) => (d, true),
            None => (s, false),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Arch {
            sm: digits.parse().ok()?,
            specific,
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.sm, if self.specific { "a" } else { "" })
    }
}

/// One module compilation: what `function_variant(module, src, define, ..)` compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    pub module: &'static str,
    pub define: Option<String>,
    pub arch: Arch,
}

impl KernelSpec {
    /// `module` or `module/define`, the device's module-cache key.
    pub fn key(&self) -> String {
        module_key(self.module, self.define.as_deref())
    }

    /// The module's source (`None` for a module the list does not know).
    pub fn source(&self) -> Option<&'static str> {
        source_of(self.module)
    }
}

/// Every module the crate can request on a device of compute capability `sm`: the three
/// define-less modules, the expert module's common and per-(dtype, format) variants, and on
/// Hopper (the one architecture with wgmma, which `DeviceExperts::path` picks from sm_90 on)
/// their `WGMMA` variants for 16-bit activations (f32 layers always take the GEMV).
pub fn kernel_specs(sm: u32) -> Vec<KernelSpec> {
    let spec = |module: &'static str, define: Option<String>| KernelSpec {
        arch: Arch::for_define(sm, define.as_deref()),
        module,
        define,
    };
    let mut out: Vec<KernelSpec> = ["routing", "rows", "comm_rows"]
        .into_iter()
        .map(|m| spec(m, None))
        .collect();
    out.push(spec("experts", Some(EXPERTS_COMMON.into())));
    for (dt, fmt) in EXPERT_VARIANTS {
        out.push(spec("experts", Some(format!("VARIANT_{dt}_{fmt}"))));
    }
    if sm == 90 {
        for (dt, fmt) in EXPERT_VARIANTS.iter().filter(|(dt, _)| *dt != "f32") {
            out.push(spec("experts", Some(format!("VARIANT_{dt}_{fmt} {WGMMA}"))));
        }
    }
    out
}

/// Whether `(module, define)` on `sm` is in [`kernel_specs`] (the loader warns when not: a
/// kernel the bundle cannot have shipped).
pub fn is_listed(module: &str, define: Option<&str>, sm: u32) -> bool {
    kernel_specs(sm)
        .iter()
        .any(|s| s.module == module && s.define.as_deref() == define)
}

/// The source of module `module`.
pub fn source_of(module: &str) -> Option<&'static str> {
    MODULES.iter().find(|(m, _)| *m == module).map(|(_, s)| *s)
}

/// `module` or `module/define`.
pub fn module_key(module: &str, define: Option<&str>) -> String {
    match define {
        Some(d) => format!("{module}/{d}"),
        None => module.to_string(),
    }
}

/// A key as a file name (`experts/VARIANT_bf16_fp8b WGMMA` -> `experts-VARIANT_bf16_fp8b-WGMMA`).
pub fn file_stem(key: &str) -> String {
    key.replace(['/', ' '], "-")
}

/// The text NVRTC compiles: each whitespace-separated word of `define` as `#define <word>`
/// (`NAME=VALUE` as `#define NAME VALUE`), then `src`.
pub fn module_text(define: Option<&str>, src: &str) -> String {
    define
        .map(|d| d.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|d| match d.split_once('=') {
            Some((name, value)) => format!("#define {name} {value}\n"),
            None => format!("#define {d}\n"),
        })
        .chain(std::iter::once(src.to_string()))
        .collect()
}

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Machine code for the real architecture (`--gpu-architecture=sm_90a`).
    Cubin,
    /// PTX for the virtual architecture (`compute_90a`), assembled by the driver at load.
    Ptx,
}

/// NVRTC's options for `arch`. Exact IEEE division/sqrt and no flush-to-zero: routing must
/// tie-break and round like the CPU reference.
pub fn nvrtc_options(arch: Arch, output: Output) -> Vec<String> {
    let target = match output {
        Output::Cubin => format!("{arch}"),
        Output::Ptx => format!("{arch}").replacen("sm_", "compute_", 1),
    };
    vec![
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        format!("--gpu-architecture={target}"),
        "--std=c++17".into(),
    ]
}

/// FNV-1a over `parts`: the hash of a module's text, options and architecture, which names
/// its disk-cache file and must match an AOT entry's.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The hash of module text `text` compiled for `arch` with this build's options.
pub fn source_hash(text: &str, arch: Arch) -> u64 {
    fnv1a(&[
        text.as_bytes(),
        b"\0",
        OPTIONS_VERSION.as_bytes(),
        b"\0",
        arch.to_string().as_bytes(),
    ])
}

/// One compiled module of an AOT directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// `module` or `module/define`.
    pub key: String,
    pub arch: Arch,
    /// [`source_hash`] of the text it was compiled from.
    pub hash: u64,
    /// The file in the directory: the CUBIN, raw-deflate compressed.
    pub file: String,
    /// The CUBIN's size once inflated.
    pub bytes: u64,
}

/// The `MANIFEST` of an AOT directory: a header, `nvrtc <version>`, `options <version>`, then
/// one tab-separated line per module: `key arch hash file bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// NVRTC's version, as `major.minor` (informational).
    pub nvrtc: String,
    /// [`OPTIONS_VERSION`] of the build that compiled the entries.
    pub options: String,
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        match lines.next() {
            Some((_, l)) if l.trim() == MANIFEST_HEADER => {}
            Some((_, l)) => return Err(format!("unknown manifest format `{}`", l.trim())),
            None => return Err("empty manifest".into()),
        }
        let (mut nvrtc, mut options, mut entries) = (None, None, Vec::new());
        for (i, line) in lines {
            let at = || format!("line {}", i + 1);
            if let Some(v) = line.strip_prefix("nvrtc ") {
                nvrtc = Some(v.trim().to_string());
                continue;
            }
            if let Some(v) = line.strip_prefix("options ") {
                options = Some(v.trim().to_string());
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let [key, arch, hash, file, bytes] = f[..] else {
                return Err(format!("{}: expected 5 tab-separated fields, found {}", at(), f.len()));
            };
            if key.is_empty() || file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(format!("{}: bad key or file name", at()));
            }
            entries.push(ManifestEntry {
                key: key.to_string(),
                arch: Arch::parse(arch).ok_or_else(|| format!("{}: bad architecture `{arch}`", at()))?,
                hash: u64::from_str_radix(hash, 16).map_err(|_| format!("{}: bad hash `{hash}`", at()))?,
                file: file.to_string(),
                bytes: bytes.parse().map_err(|_| format!("{}: bad size `{bytes}`", at()))?,
            });
        }
        Ok(Manifest {
            nvrtc: nvrtc.ok_or("no `nvrtc` line")?,
            options: options.ok_or("no `options` line")?,
            entries,
        })
    }

    pub fn render(&self) -> String {
        let mut s = format!("{MANIFEST_HEADER}\nnvrtc {}\noptions {}\n", self.nvrtc, self.options);
        for e in &self.entries {
            s.push_str(&format!(
                "{}\t{}\t{:016x}\t{}\t{}\n",
                e.key, e.arch, e.hash, e.file, e.bytes
            ));
        }
        s
    }
}

/// Why a module was not taken from the AOT directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AotMiss {
    /// No AOT directory ([`aot_dir`]).
    NoDirectory,
    /// The directory's manifest is unreadable or malformed.
    BadManifest(String),
    /// Built with other NVRTC options ([`OPTIONS_VERSION`]).
    OtherOptions { built: String },
    /// The module is not in the manifest.
    NotShipped,
    /// Shipped, but not for the device's architecture.
    OtherArch { wanted: Arch, shipped: Vec<Arch> },
    /// Shipped for this architecture from another source text (the kernels changed since).
    Stale { built: u64, now: u64 },
    /// Shipped, but reading, inflating or loading the file failed.
    Unusable(String),
}

impl fmt::Display for AotMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AotMiss::NoDirectory => write!(f, "no AOT kernel directory"),
            AotMiss::BadManifest(e) => write!(f, "AOT manifest unusable: {e}"),
            AotMiss::OtherOptions { built } => write!(
                f,
                "AOT kernels built with NVRTC options {built}, this build uses {OPTIONS_VERSION}"
            ),
            AotMiss::NotShipped => write!(f, "not in the AOT manifest"),
            AotMiss::OtherArch { wanted, shipped } => {
                let shipped: Vec<String> = shipped.iter().map(Arch::to_string).collect();
                write!(
                    f,
                    "AOT kernel shipped for {} only, the device needs {wanted}",
                    shipped.join(", ")
                )
            }
            AotMiss::Stale { built, now } => write!(
                f,
                "AOT kernel is stale (built from source hash {built:016x}, this build's is {now:016x})"
            ),
            AotMiss::Unusable(e) => write!(f, "AOT kernel unusable: {e}"),
        }
    }
}

/// The entry of `key` to load on a device needing `arch`, for a text of hash `hash`; or why
/// there is none. Architectures must be equal (a CUBIN runs on the architecture it was built
/// for; an `a` target on exactly that one) and so must the hashes.
pub fn lookup<'m>(manifest: &'m Manifest, key: &str, arch: Arch, hash: u64) -> Result<&'m ManifestEntry, AotMiss> {
    if manifest.options != OPTIONS_VERSION {
        return Err(AotMiss::OtherOptions {
            built: manifest.options.clone(),
        });
    }
    let of_key: Vec<&ManifestEntry> = manifest.entries.iter().filter(|e| e.key == key).collect();
    if of_key.is_empty() {
        return Err(AotMiss::NotShipped);
    }
    let Some(entry) = of_key.iter().find(|e| e.arch == arch) else {
        return Err(AotMiss::OtherArch {
            wanted: arch,
            shipped: of_key.iter().map(|e| e.arch).collect(),
        });
    };
    if entry.hash != hash {
        return Err(AotMiss::Stale {
            built: entry.hash,
            now: hash,
        });
    }
    Ok(entry)
}

/// Environment variable naming the AOT directory; set and empty turns AOT kernels off.
pub const AOT_DIR_ENV: &str = "MOE_KERNEL_AOT_DIR";

/// The AOT directory: `$MOE_KERNEL_AOT_DIR` when set (empty: none), else the first `kernels/`
/// holding a [`MANIFEST_FILE`] in the executable's directory or one of its two parents (the
/// GPU bundle's `kernels/` beside `bin/moe` and `bin/tests/*`).
pub fn aot_dir_from(env: Option<std::ffi::OsString>, exe: Option<&Path>) -> Option<PathBuf> {
    if let Some(v) = env {
        return (!v.is_empty()).then(|| PathBuf::from(v));
    }
    exe?.parent()?
        .ancestors()
        .take(3)
        .map(|d| d.join("kernels"))
        .find(|k| k.join(MANIFEST_FILE).is_file())
}

/// [`aot_dir_from`] of this process.
pub fn aot_dir() -> Option<PathBuf> {
    aot_dir_from(std::env::var_os(AOT_DIR_ENV), std::env::current_exe().ok().as_deref())
}

/// Where a loaded module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOrigin {
    /// The AOT directory's CUBIN.
    Aot,
    /// A CUBIN an earlier process compiled into the disk cache (`$MOE_KERNEL_CACHE`).
    DiskCache,
    /// Compiled now by NVRTC to a CUBIN.
    Jit,
    /// Compiled now by NVRTC to PTX, assembled by the driver (the CUBIN route failed).
    JitPtx,
}

impl fmt::Display for KernelOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelOrigin::Aot => "AOT",
            KernelOrigin::DiskCache => "disk cache",
            KernelOrigin::Jit => "JIT",
            KernelOrigin::JitPtx => "JIT (PTX)",
        })
    }
}

/// One module load of this process.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelLoad {
    /// `module` or `module/define`.
    pub key: String,
    pub arch: Arch,
    pub origin: KernelOrigin,
    /// Wall time from the request to the loaded module (reading, compiling, loading).
    pub ms: f64,
    /// Why an earlier source of the fallback order was passed over (`None` for AOT).
    pub note: Option<String>,
}

fn loads() -> &'static Mutex<Vec<KernelLoad>> {
    static LOADS: Mutex<Vec<KernelLoad>> = Mutex::new(Vec::new());
    &LOADS
}

/// Every module loaded so far in this process, in load order (empty without the `cuda`
/// feature). `moe bench --backend cuda` prints a summary after each preset's first forward.
pub fn kernel_loads() -> Vec<KernelLoad> {
    loads().lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Appends to [`kernel_loads`] (called by the CUDA build's loader only).
#[allow(dead_code)]
pub(crate) fn record_load(load: KernelLoad) {
    loads().lock().unwrap_or_else(|p| p.into_inner()).push(load);
}

/// One line for `loads`: `4 modules in 12 ms (4 AOT)`, the others' reasons after it.
pub fn kernel_loads_summary(loads: &[KernelLoad]) -> String {
    if loads.is_empty() {
        return "no modules loaded".into();
    }
    let ms: f64 = loads.iter().map(|l| l.ms).sum();
    let mut by: Vec<String> = Vec::new();
    for origin in [
        KernelOrigin::Aot,
        KernelOrigin::DiskCache,
        KernelOrigin::Jit,
        KernelOrigin::JitPtx,
    ] {
        let n = loads.iter().filter(|l| l.origin == origin).count();
        if n > 0 {
            by.push(format!("{n} {origin}"));
        }
    }
    let mut s = format!(
        "{} module{} in {ms:.0} ms ({})",
        loads.len(),
        if loads.len() == 1 { "" } else { "s" },
        by.join(", ")
    );
    for l in loads.iter().filter(|l| l.origin != KernelOrigin::Aot) {
        s.push_str(&format!("; {} {} {} {:.0} ms", l.key, l.arch, l.origin, l.ms));
        if let Some(n) = &l.note {
            s.push_str(&format!(" ({n})"));
        }
    }
    s
}

#[cfg(test)]
#[path = "aot_tests.rs"]
mod tests;
