//! `moe bench` end to end on the tiny preset: JSON rows with the arithmetic checked by hand,
//! the table with a peer's timings, the markdown page, the weight cache reused, and errors.
//! Timings are only checked to be positive: these are smoke tests, not benchmarks.

use std::path::Path;

use serde_json::Value;

use super::{moe, scratch};

/// Small ceilings so a test run takes well under a second.
const FAST: [&str; 4] = ["--ceiling-mib", "8", "--ceiling-gemm", "64"];

fn bench(cache: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["bench", "--preset", "tiny", "--cache-dir", cache.to_str().unwrap()];
    args.extend(FAST);
    args.extend(extra);
    moe(&args)
}

#[test]
fn bench_tiny_json_is_one_row_with_the_arithmetic_done_by_hand() {
    let cache = scratch("bench-json");
    let out = bench(&cache, &["--tokens", "1", "--json", "--repeats", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "preset",
        "tokens",
        "backend",
        "median_ms",
        "gflops",
        "weight_gbps",
        "gemm_ceiling_gflops",
        "read_ceiling_gbps",
        "roofline_ratio",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(
        (v["preset"].as_str(), v["tokens"].as_u64(), v["backend"].as_str()),
        (Some("tiny"), Some(1), Some("cpu"))
    );
    // One token, top-2 of 8 experts, H=64, I=32: 2 * 1 * 2 * 3 * 64 * 32 = 24576 FLOP, and
    // exactly two experts of 3 * 64 * 32 bf16 weights = 2 * 12288 bytes.
    assert!((v["gflop"].as_f64().unwrap() - 24576e-9).abs() < 1e-15);
    assert_eq!(v["experts_touched"].as_u64(), Some(2));
    assert_eq!(v["weight_bytes"].as_u64(), Some(24576));
    assert_eq!(v["repeats"].as_u64(), Some(2));
    let ms = v["median_ms"].as_f64().unwrap();
    assert!(ms > 0.0);
    let want_gbps = 24576.0 / (ms * 1e-3) / 1e9;
    assert!((v["weight_gbps"].as_f64().unwrap() - want_gbps).abs() < 1e-6 * want_gbps);
    // The weights were cached; a second run reuses the same shard file.
    let dir = cache.join("tiny-bf16-seed0-v1");
    let shard = dir.join("experts-00000.safetensors");
    let before = std::fs::metadata(&shard).unwrap().modified().unwrap();
    assert!(
        bench(&cache, &["--tokens", "1", "--json", "--repeats", "1"])
            .status
            .success()
    );
    assert_eq!(std::fs::metadata(&shard).unwrap().modified().unwrap(), before);
}

#[test]
fn bench_table_with_a_peer_and_the_markdown_page() {
    let cache = scratch("bench-peer");
    let peer = cache.join("peer.jsonl");
    std::fs::write(
        &peer,
        "{\"preset\":\"tiny\",\"tokens\":8,\"backend\":\"candle\",\"median_ms\":1000.0}\n",
    )
    .unwrap();
    let page = cache.join("BENCHMARKS.md");
    let out = bench(
        &cache,
        &[
            "--tokens",
            "1,8",
            "--repeats",
            "1",
            "--peer",
            peer.to_str().unwrap(),
            "--markdown",
            page.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ceilings: f32 GEMM 64x64x64"), "{text}");
    let row8 = text
        .lines()
        .find(|l| l.starts_with("tiny") && l.split_whitespace().nth(2) == Some("8"))
        .unwrap();
    // The peer's 1000 ms is in the T=8 row with a speedup; T=1 has no peer timing.
    assert!(row8.contains("1000.00") && row8.trim_end().ends_with('x'), "{row8}");
    assert!(text.contains("faster than candle on every row: met"), "{text}");
    let md = std::fs::read_to_string(&page).unwrap();
    for want in [
        "## Machine",
        "## Ceilings",
        "| tiny | bf16 | 8 |",
        "candle ms",
        "## Targets",
    ] {
        assert!(md.contains(want), "missing {want}:\n{md}");
    }
}

#[test]
fn bench_prepare_prints_the_plan_for_the_peer() {
    let cache = scratch("bench-prepare");
    let out = bench(&cache, &["--prepare", "--tokens", "1,64", "--repeats", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert_eq!((parts[0], parts[2]), ("tiny", "1:4,64:4"));
    assert!(Path::new(parts[1]).join("meta.json").is_file());
}

#[test]
fn bench_unknown_preset_or_backend_fails_naming_it() {
    let cache = scratch("bench-bad");
    let out = moe(&["bench", "--preset", "qwen9", "--cache-dir", cache.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown preset `qwen9`") && err.contains("qwen3-30b-a3b"),
        "{err}"
    );
    let out = bench(&cache, &["--tokens", "1", "--backend", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn bench_sweep_reports_every_token_count() {
    let cache = scratch("bench-sweep");
    let want = [1u64, 2, 4, 8, 16, 32, 128, 256, 1024, 2048, 8192];
    let out = bench(&cache, &["--sweep", "--json", "--repeats", "1", "--warmup", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let tokens: Vec<u64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, want, "{stdout}");
    // The table has one line per count too.
    let out = bench(&cache, &["--sweep", "--repeats", "1", "--warmup", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("tiny"))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(rows, want, "{text}");
    // `--sweep` and `--tokens` are one choice.
    assert!(!bench(&cache, &["--sweep", "--tokens", "1"]).status.success());
}
