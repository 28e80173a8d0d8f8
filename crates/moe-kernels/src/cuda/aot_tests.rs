//! Tests of the AOT kernel list (`super`): it covers every module, source and variant the
//! code can request, the manifest round-trips, and the lookup refuses stale or foreign entries.

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
                let ok =
                    arg.starts_with("MODULE, SRC,") || path.ends_with("device.rs") && arg.starts_with("module, src,");
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
