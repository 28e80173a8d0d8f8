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
mod tests {
    use super::*;

    const ENABLED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cuda/enabled");

    /// Every `.rs` file under `enabled/` with its text.
    fn enabled_sources() -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    out.push((p, text));
                }
            }
        }
        let mut out = Vec::new();
        walk(Path::new(ENABLED), &mut out);
        out
    }

    /// The string literal of `const NAME: &str = "..."` in `text`.
    fn const_str(text: &str, name: &str) -> Option<String> {
        let at = text.find(&format!("const {name}: &str = \""))?;
        let rest = &text[at..];
        let start = rest.find('"')? + 1;
        let end = start + rest[start..].find('"')?;
        Some(rest[start..end].to_string())
    }

    /// The `include_str!` files of `const SRC` in `text`, relative to `kernels/`.
    fn src_files(text: &str) -> Vec<String> {
        let Some(at) = text.find("const SRC: &str = ") else {
            return Vec::new();
        };
        let body = &text[at..at + text[at..].find(';').unwrap()];
        body.split("include_str!(\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].trim_start_matches("../kernels/").to_string())
            .collect()
    }

    fn kernel_file(rel: &str) -> String {
        std::fs::read_to_string(format!("{}/src/cuda/kernels/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// Every file of the CUDA layer defining a `MODULE` has it in the list, with the list's
    /// source equal to its `SRC` (the same files, in order), and every module in the list has
    /// such a file.
    #[test]
    fn the_list_covers_every_call_site_module_and_source() {
        let mut seen = Vec::new();
        for (path, text) in enabled_sources() {
            let Some(module) = const_str(&text, "MODULE") else {
                continue;
            };
            let listed = source_of(&module)
                .unwrap_or_else(|| panic!("module `{module}` of {} is not in aot::MODULES", path.display()));
            let files = src_files(&text);
            assert!(!files.is_empty(), "{}: no `const SRC` of include_str!s", path.display());
            let text: String = files.iter().map(|f| kernel_file(f)).collect();
            assert_eq!(
                text,
                listed,
                "the source of `{module}` differs from {}'s SRC",
                path.display()
            );
            seen.push(module);
        }
        for (m, _) in MODULES {
            assert!(seen.iter().any(|s| s == m), "listed module `{m}` has no call site");
        }
        // Every kernel request passes a file's MODULE and SRC (device.rs forwards its
        // arguments): no other module name or source can reach the device's module cache.
        let mut calls = 0;
        for (path, text) in enabled_sources() {
            for pat in [".function(", ".function_variant("] {
                for (at, _) in text.match_indices(pat) {
                    let arg = text[at + pat.len()..].trim_start();
                    let ok = arg.starts_with("MODULE, SRC,")
                        || path.ends_with("device.rs") && arg.starts_with("module, src,");
                    assert!(
                        ok,
                        "{}: a kernel request not through MODULE, SRC: {}",
                        path.display(),
                        &arg[..40.min(arg.len())]
                    );
                    calls += 1;
                }
            }
        }
        assert!(calls >= 10, "found only {calls} kernel requests: the scan is broken");
    }

    /// The expert variants in the list are exactly the `VARIANT_*` words the expert sources
    /// test, each has code under `WGMMA` exactly where a WGMMA variant is listed, and the
    /// Rust side names variants only through `VARIANT_{dt}_{format}` and `VARIANT_common`.
    #[test]
    fn the_expert_variants_match_the_sources_and_the_rust_names() {
        let mut in_src: Vec<String> = EXPERTS_SRC
            .lines()
            .filter_map(|l| l.trim().strip_prefix("#ifdef "))
            .map(str::trim)
            .filter(|w| w.starts_with("VARIANT_"))
            .map(str::to_string)
            .collect();
        in_src.sort();
        in_src.dedup();
        let mut listed: Vec<String> = kernel_specs(90)
            .into_iter()
            .filter(|s| s.module == "experts")
            .filter_map(|s| s.define)
            .filter(|d| !d.contains(WGMMA))
            .collect();
        listed.sort();
        assert_eq!(listed, in_src);
        // Formats and dtypes as experts.rs spells them.
        let experts = std::fs::read_to_string(format!("{ENABLED}/experts.rs")).unwrap();
        assert!(experts.contains("format!(\"VARIANT_{}_{}\", dt_suffix(self.dtype)?, self.format.suffix())"));
        assert!(experts.contains(&format!("const COMMON: &str = \"{EXPERTS_COMMON}\"")));
        for fmt in ["float", "fp8t", "fp8b", "mxfp4"] {
            assert!(experts.contains(&format!("=> \"{fmt}\"")), "format suffix {fmt}");
            assert!(EXPERT_VARIANTS.iter().any(|(_, f)| *f == fmt));
        }
        for dt in ["f32", "bf16", "f16"] {
            assert!(experts.contains(&format!("=> Ok(\"{dt}\")")), "dtype suffix {dt}");
        }
        // Every string literal naming a variant in the Rust sources is one the list builds.
        for (path, text) in enabled_sources() {
            for (at, _) in text.match_indices("\"VARIANT_") {
                let lit = &text[at + 1..at + 1 + text[at + 1..].find('"').unwrap()];
                assert!(
                    lit == "VARIANT_{}_{}" || lit == EXPERTS_COMMON,
                    "{}: variant literal `{lit}` not built by kernel_specs",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn wgmma_variants_only_on_hopper_and_for_16_bit() {
        for sm in [89, 90, 100] {
            let specs = kernel_specs(sm);
            let wg: Vec<&KernelSpec> = specs.iter().filter(|s| s.arch.specific).collect();
            if sm == 90 {
                assert_eq!(wg.len(), 8);
                assert!(wg.iter().all(|s| s.define.as_deref().unwrap().ends_with(" WGMMA")));
                assert!(wg.iter().all(|s| !s.key().contains("f32")));
            } else {
                assert!(wg.is_empty());
            }
            assert_eq!(specs.len() - wg.len(), 13);
            // Keys are unique.
            let mut keys: Vec<String> = specs.iter().map(KernelSpec::key).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), specs.len());
        }
        assert!(is_listed("experts", Some("VARIANT_bf16_fp8b WGMMA"), 90));
        assert!(!is_listed("experts", Some("VARIANT_bf16_fp8b WGMMA"), 89));
        assert!(is_listed("routing", None, 89));
        assert!(!is_listed("routing", Some("X"), 90));
        let total: usize = AOT_SMS.iter().map(|&sm| kernel_specs(sm).len()).sum();
        assert_eq!(total, 13 + 21);
    }

    #[test]
    fn arch_names_round_trip() {
        for (s, sm, specific) in [("sm_90a", 90, true), ("sm_89", 89, false), ("sm_100", 100, false)] {
            let a = Arch::parse(s).unwrap();
            assert_eq!((a.sm, a.specific), (sm, specific));
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(Arch::parse("90a"), Arch::parse("sm_90a"));
        for bad in ["", "sm_", "sm_9x", "compute_90", "a"] {
            assert_eq!(Arch::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Arch::for_define(90, Some("VARIANT_bf16_float WGMMA")).to_string(),
            "sm_90a"
        );
        assert_eq!(Arch::for_define(90, Some("VARIANT_bf16_float")).to_string(), "sm_90");
        assert_eq!(Arch::for_define(90, Some("WGMMAX")).to_string(), "sm_90");
        assert_eq!(
            nvrtc_options(Arch::parse("sm_90a").unwrap(), Output::Ptx)[3],
            "--gpu-architecture=compute_90a"
        );
        assert_eq!(
            nvrtc_options(Arch::parse("sm_89").unwrap(), Output::Cubin)[3],
            "--gpu-architecture=sm_89"
        );
    }

    #[test]
    fn module_text_prepends_the_defines() {
        assert_eq!(module_text(Some("A B=2"), "x"), "#define A\n#define B 2\nx");
        assert_eq!(module_text(None, "x"), "x");
        assert_eq!(
            file_stem("experts/VARIANT_bf16_fp8b WGMMA"),
            "experts-VARIANT_bf16_fp8b-WGMMA"
        );
        let a = Arch::parse("sm_90").unwrap();
        let b = Arch::parse("sm_90a").unwrap();
        assert_ne!(source_hash("x", a), source_hash("x", b));
        assert_ne!(source_hash("x", a), source_hash("y", a));
        assert_eq!(source_hash("x", a), source_hash("x", a));
    }

    fn manifest() -> Manifest {
        let a90 = Arch::parse("sm_90").unwrap();
        let a90a = Arch::parse("sm_90a").unwrap();
        let a89 = Arch::parse("sm_89").unwrap();
        let e = |key: &str, arch: Arch, hash: u64| ManifestEntry {
            key: key.into(),
            arch,
            hash,
            file: format!("{}.{arch}.cubin.deflate", file_stem(key)),
            bytes: 1234,
        };
        Manifest {
            nvrtc: "13.0".into(),
            options: OPTIONS_VERSION.into(),
            entries: vec![
                e("routing", a90, 1),
                e("routing", a89, 2),
                e("experts/VARIANT_bf16_fp8b WGMMA", a90a, 3),
            ],
        }
    }

    #[test]
    fn manifest_round_trips_and_rejects_malformed_lines() {
        let m = manifest();
        let text = m.render();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        assert!(text.contains("experts/VARIANT_bf16_fp8b WGMMA\tsm_90a\t0000000000000003\t"));
        for (bad, why) in [
            ("", "empty"),
            ("# something else\n", "unknown manifest format"),
            (&format!("{MANIFEST_HEADER}\noptions v2\n"), "no `nvrtc` line"),
            (&format!("{MANIFEST_HEADER}\nnvrtc 13.0\n"), "no `options` line"),
            (
                &format!("{MANIFEST_HEADER}\nnvrtc 13.0\noptions v2\nrouting\tsm_90\t1\tf\n"),
                "expected 5",
            ),
            (
                &format!("{MANIFEST_HEADER}\nnvrtc 13.0\noptions v2\nrouting\tsm_9z\t1\tf\t1\n"),
                "bad architecture",
            ),
            (
                &format!("{MANIFEST_HEADER}\nnvrtc 13.0\noptions v2\nrouting\tsm_90\tzz\tf\t1\n"),
                "bad hash",
            ),
            (
                &format!("{MANIFEST_HEADER}\nnvrtc 13.0\noptions v2\nrouting\tsm_90\t1\t../f\t1\n"),
                "bad key or file",
            ),
            (
                &format!("{MANIFEST_HEADER}\nnvrtc 13.0\noptions v2\nrouting\tsm_90\t1\tf\tx\n"),
                "bad size",
            ),
        ] {
            let e = Manifest::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn lookup_takes_only_the_same_arch_and_source() {
        let m = manifest();
        let a90 = Arch::parse("sm_90").unwrap();
        let a90a = Arch::parse("sm_90a").unwrap();
        let a89 = Arch::parse("sm_89").unwrap();
        let a100 = Arch::parse("sm_100").unwrap();
        assert_eq!(lookup(&m, "routing", a90, 1).unwrap().arch, a90);
        assert_eq!(lookup(&m, "routing", a89, 2).unwrap().arch, a89);
        assert_eq!(lookup(&m, "routing", a90, 2), Err(AotMiss::Stale { built: 1, now: 2 }));
        assert_eq!(
            lookup(&m, "routing", a100, 1),
            Err(AotMiss::OtherArch {
                wanted: a100,
                shipped: vec![a90, a89]
            })
        );
        // The arch-specific entry is not taken for the plain target, nor the reverse.
        assert!(matches!(
            lookup(&m, "experts/VARIANT_bf16_fp8b WGMMA", a90, 3),
            Err(AotMiss::OtherArch { .. })
        ));
        assert!(lookup(&m, "experts/VARIANT_bf16_fp8b WGMMA", a90a, 3).is_ok());
        assert_eq!(lookup(&m, "rows", a90, 1), Err(AotMiss::NotShipped));
        let old = Manifest {
            options: "v1".into(),
            ..m
        };
        assert_eq!(
            lookup(&old, "routing", a90, 1),
            Err(AotMiss::OtherOptions { built: "v1".into() })
        );
        for miss in [
            AotMiss::NotShipped,
            AotMiss::Stale { built: 1, now: 2 },
            AotMiss::OtherArch {
                wanted: a100,
                shipped: vec![a90],
            },
        ] {
            assert!(!miss.to_string().is_empty());
        }
    }

    #[test]
    fn aot_dir_rule() {
        let root = std::env::temp_dir().join(format!("moe-aot-dir-{}", std::process::id()));
        let bundle = root.join("bundle");
        std::fs::create_dir_all(bundle.join("bin/tests")).unwrap();
        std::fs::create_dir_all(bundle.join("kernels")).unwrap();
        let exe = bundle.join("bin/tests/moe-kernels-lib");
        // No manifest: no directory.
        assert_eq!(aot_dir_from(None, Some(&exe)), None);
        std::fs::write(bundle.join("kernels").join(MANIFEST_FILE), "x").unwrap();
        assert_eq!(aot_dir_from(None, Some(&exe)), Some(bundle.join("kernels")));
        assert_eq!(
            aot_dir_from(None, Some(&bundle.join("bin/moe"))),
            Some(bundle.join("kernels"))
        );
        assert_eq!(
            aot_dir_from(None, Some(&bundle.join("moe"))),
            Some(bundle.join("kernels"))
        );
        // Three levels up is too far.
        assert_eq!(aot_dir_from(None, Some(&bundle.join("bin/tests/deep/x"))), None);
        // The variable wins; empty turns AOT off.
        assert_eq!(
            aot_dir_from(Some("/elsewhere".into()), Some(&exe)),
            Some("/elsewhere".into())
        );
        assert_eq!(aot_dir_from(Some("".into()), Some(&exe)), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn summary_counts_origins_and_names_the_fallbacks() {
        let arch = Arch::parse("sm_90").unwrap();
        let l = |key: &str, origin, note: Option<&str>| KernelLoad {
            key: key.into(),
            arch,
            origin,
            ms: 2.0,
            note: note.map(str::to_string),
        };
        assert_eq!(kernel_loads_summary(&[]), "no modules loaded");
        let s = kernel_loads_summary(&[
            l("routing", KernelOrigin::Aot, None),
            l("rows", KernelOrigin::Aot, None),
            l(
                "experts/VARIANT_common",
                KernelOrigin::Jit,
                Some("not in the AOT manifest"),
            ),
        ]);
        assert_eq!(
            s,
            "3 modules in 6 ms (2 AOT, 1 JIT); experts/VARIANT_common sm_90 JIT 2 ms (not in the AOT manifest)"
        );
    }
}
