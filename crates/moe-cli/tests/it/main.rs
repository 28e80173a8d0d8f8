//! Integration tests of the `moe` binary: checkpoint runs against the transformers oracle
//! fixtures (float and quantized), `moe quantize` round trips, the embedded default run, and
//! error exits.

mod bench;
mod hardening;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moe_core::Tensor;
use moe_hf::Checkpoint;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf");
/// Quantized transformers fixtures (vendored; never `/work/shared`).
const QUANT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf-quant");

fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .expect("run the moe binary")
}

/// A test's own directory under the system temp dir, removed when the test ends (also when it
/// fails), so repeated runs do not fill the disk.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    // Unique per call: tests run in parallel threads of one process and may share a tag.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("moe-cli-it-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn read(path: &Path, key: &str) -> Tensor {
    Checkpoint::open_file(path)
        .unwrap()
        .tensor(key)
        .unwrap()
        .to_tensor(key)
        .unwrap()
}

fn rel_l2(y: &Tensor, r: &Tensor) -> f64 {
    assert_eq!(y.shape(), r.shape());
    let (a, b) = (y.to_f32_vec("y").unwrap(), r.to_f32_vec("r").unwrap());
    let (mut n, mut d) = (0f64, 0f64);
    for (&a, &b) in a.iter().zip(&b) {
        n += (f64::from(a) - f64::from(b)).powi(2);
        d += f64::from(b).powi(2);
    }
    (n / d).sqrt()
}

fn check_fixture(name: &str, tol: f64, extra: &[&str]) {
    check_dir(
        &Path::new(FIXTURES).join(name),
        &Path::new(FIXTURES).join(name),
        tol,
        extra,
    );
}

/// Runs the checkpoint in `model` on the inputs of fixture `oracle` and compares with its outputs.
fn check_dir(model: &Path, oracle: &Path, tol: f64, extra: &[&str]) -> f64 {
    let name = model.file_name().unwrap().to_string_lossy().into_owned();
    let name = name.as_str();
    let dir = model;
    let io = oracle.join("io.safetensors");
    let out_dir = scratch(&format!("{name}-{}", extra.join("")));
    let mut worst = 0.0f64;
    for t in [1, 7, 130] {
        let out = out_dir.join(format!("y_{t}.safetensors"));
        let key = format!("x_{t}");
        let mut args = vec![
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--layer",
            "0",
            "--input",
            io.to_str().unwrap(),
            "--input-key",
            &key,
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = moe(&args);
        assert!(
            o.status.success(),
            "{name} T={t}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let y = read(&out, "y");
        let y_ref = read(&io, &format!("y_{t}"));
        assert_eq!(y.dtype(), y_ref.dtype(), "{name}: output dtype is the model's");
        let err = rel_l2(&y, &y_ref);
        assert!(
            err <= tol,
            "{name} {extra:?} T={t}: relative L2 error {err:.3e} > {tol:.0e}"
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn f32_checkpoint_matches_oracle() {
    check_fixture("qwen2_moe-float32", 1e-5, &[]);
}

#[test]
fn bf16_checkpoint_matches_oracle_chunked_on_cpu() {
    check_fixture(
        "deepseek_v3-bfloat16",
        3e-2,
        &["--backend", "cpu", "--max-tokens-per-chunk", "16"],
    );
}

#[test]
fn fused_checkpoint_matches_oracle_on_reference() {
    check_fixture("gpt_oss-bfloat16", 3e-2, &["--backend", "reference"]);
}

#[test]
fn json_summary_is_one_object() {
    let dir = Path::new(FIXTURES).join("llama4-float32");
    let io = dir.join("io.safetensors");
    let o = moe(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        io.to_str().unwrap(),
        "--input-key",
        "x_7",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
    assert_eq!(v["mode"], "model");
    assert_eq!(v["family"], "llama4_text");
    assert_eq!(v["tokens"], 7);
    assert!(v["report"].is_object());
}

#[test]
fn default_run_prints_report_and_throughput() {
    let o = moe(&["run"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("backend:"), "resolution report missing:\n{stdout}");
    assert!(stdout.contains("routing balance:"), "{stdout}");
    assert!(stdout.contains("GFLOP/s"), "{stdout}");
}

#[test]
fn default_run_is_deterministic_in_json() {
    let a = moe(&["run", "--tokens", "64", "--json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["mode"], "synthetic");
    assert_eq!(v["tokens"], 64);
    let b: serde_json::Value = serde_json::from_slice(&moe(&["run", "--tokens", "64", "--json"]).stdout).unwrap();
    assert_eq!(v["balance"], b["balance"], "same seed, same routing");
}

#[test]
fn missing_model_dir_fails_naming_it() {
    let o = moe(&["run", "--model", "/nonexistent/moe-model-dir"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("/nonexistent/moe-model-dir"), "{err}");
}

#[test]
fn bad_input_key_fails_naming_it() {
    let dir = Path::new(FIXTURES).join("olmoe-float32");
    let io = dir.join("io.safetensors");
    let o = moe(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        io.to_str().unwrap(),
        "--input-key",
        "no_such_key",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("no_such_key"), "{err}");
}

#[test]
fn wrong_input_shape_and_dense_layer_fail() {
    let dir = Path::new(FIXTURES).join("olmoe-float32");
    // An input of width 3 for a model with H = 64.
    let d = scratch("wrong-shape");
    let input = d.join("x.safetensors");
    let data = vec![0u8; 2 * 3 * 4];
    let st = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    std::fs::write(&input, safetensors::serialize([("x", st)], None).unwrap()).unwrap();
    let o = moe(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shape mismatch") && err.contains("`x`"), "{err}");

    let o = moe(&["run", "--model", dir.to_str().unwrap(), "--layer", "3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layer 3"), "{err}");
}

#[test]
fn help_describes_run() {
    let o = moe(&["run", "--help"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model",
        "--layer",
        "--input",
        "--input-key",
        "--output",
        "--max-tokens-per-chunk",
        "--backend",
        "--json",
    ] {
        assert!(s.contains(flag), "--help lacks {flag}");
    }
}

/// The whole oracle sweep through the binary: every fixture (seven families x f32/bf16),
/// T in {1, 7, 130}, both CPU backends, chunk limits unlimited, 1 and 16.
#[test]
fn every_fixture_backend_and_chunk_limit_matches_oracle_through_the_cli() {
    let mut names: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.path()
                .join("config.json")
                .exists()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 14, "seven families x two dtypes: {names:?}");
    for name in &names {
        let tol = if name.ends_with("float32") { 1e-5 } else { 3e-2 };
        for backend in ["reference", "cpu"] {
            for chunk in [None, Some("1"), Some("16")] {
                let mut extra = vec!["--backend", backend];
                if let Some(c) = chunk {
                    extra.extend(["--max-tokens-per-chunk", c]);
                }
                check_fixture(name, tol, &extra);
            }
        }
    }
}

// --- quantized checkpoints ------------------------------------------------------------------

/// The quantized transformers fixtures through `moe run`, T in {1, 7, 130}, both backends,
/// within `fixtures/hf-quant/README.md`'s bounds (DeepSeek FP8 block with activation
/// quantization 5e-2, GPT-OSS MXFP4 3e-2).
#[test]
fn quantized_fixtures_match_oracle_through_the_cli() {
    for (name, tol) in [("deepseek_v3-fp8block", 5e-2), ("gpt_oss-mxfp4", 3e-2)] {
        let dir = Path::new(QUANT_FIXTURES).join(name);
        for backend in ["reference", "cpu"] {
            let worst = check_dir(&dir, &dir, tol, &["--backend", backend]);
            eprintln!("{name} [{backend}]: worst relative L2 error {worst:.3e}");
        }
    }
}

#[test]
fn dequantized_fixtures_match_oracle_through_the_cli() {
    // The weight-only reference path (`--dequantize`): README bound 3e-2 for both.
    for name in ["deepseek_v3-fp8block", "gpt_oss-mxfp4"] {
        let dir = Path::new(QUANT_FIXTURES).join(name);
        let worst = check_dir(&dir, &dir, 3e-2, &["--backend", "cpu", "--dequantize"]);
        eprintln!("{name} [cpu, dequantized]: worst relative L2 error {worst:.3e}");
    }
}

/// Relative L2 bound of a quantized-by-`moe quantize` layer against the bf16 oracle of the
/// float model (measured worst cases and the reasoning in docs/QUANTIZATION.md: FP4 keeps one
/// mantissa bit, and three GEMMs compound its rounding).
fn quantized_bound(format: &str) -> f64 {
    match format {
        "fp8-block" => 8e-2,
        "nvfp4" => 0.35,
        _ => 0.3,
    }
}

fn quantize_cmd(model: &Path, format: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--format",
        format,
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    moe(&args)
}

/// `moe quantize` of bf16 fixtures (per-expert with shared experts, Mixtral names, fused
/// interleaved with biases, fused halves) in every format, then `moe run` on the result
/// against the float model's oracle.
#[test]
fn quantize_then_run_matches_bf16_oracle() {
    let families = [
        "deepseek_v3-bfloat16",
        "mixtral-bfloat16",
        "gpt_oss-bfloat16",
        "llama4-bfloat16",
    ];
    for format in ["fp8-block", "nvfp4", "mxfp4"] {
        for name in families {
            let src = Path::new(FIXTURES).join(name);
            let d = scratch(&format!("quantize-{name}-{format}"));
            let out = d.join(format!("{name}-{format}"));
            let o = quantize_cmd(&src, format, &out, &[]);
            assert!(
                o.status.success(),
                "quantize {name} {format}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(stdout.contains("moe quantize:") && stdout.contains(format), "{stdout}");
            assert!(
                o.stderr.is_empty(),
                "no progress bar without a terminal: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            // The bf16 fixtures have I = 32; the FP8 block kernels need whole 128-row blocks
            // per FC1 half (TensorRT-LLM's `I % 128 == 0`), so their FP8 block checkpoints run
            // dequantized; the quantized FP8 block path is the DeepSeek FP8 fixture's test above.
            let extra: &[&str] = if format == "fp8-block" {
                &["--backend", "cpu", "--dequantize"]
            } else {
                &["--backend", "cpu"]
            };
            let worst = check_dir(&out, &src, quantized_bound(format), extra);
            eprintln!("{name} quantized to {format}: worst relative L2 error {worst:.3e}");
        }
    }
}

#[test]
fn quantize_json_reports_sizes() {
    let src = Path::new(FIXTURES).join("qwen3_moe-bfloat16");
    let d = scratch("quantize-json");
    let out = d.join("q");
    let o = quantize_cmd(&src, "nvfp4", &out, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["mode"], "quantize");
    assert_eq!(v["summary"]["format"], "nvfp4");
    let (bytes_in, bytes_out) = (
        v["summary"]["expert_bytes_in"].as_u64().unwrap(),
        v["summary"]["expert_bytes_out"].as_u64().unwrap(),
    );
    assert!(
        bytes_out * 3 < bytes_in,
        "NVFP4 is under a third of bf16: {bytes_in} -> {bytes_out}"
    );
    // `moe run --json` on the result reports the format and the resident/disk sizes.
    let o = moe(&["run", "--model", out.to_str().unwrap(), "--tokens", "4", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["experts"]["format"], "NVFP4");
    assert_eq!(r["experts"]["disk_bytes"].as_u64(), Some(bytes_out));
}

#[test]
fn nvfp4_calibration_sets_input_scales() {
    let src = Path::new(FIXTURES).join("olmoe-bfloat16");
    let io = src.join("io.safetensors");
    let d = scratch("quantize-calibration");
    let out = d.join("q");
    let o = quantize_cmd(
        &src,
        "nvfp4",
        &out,
        &["--calibration", io.to_str().unwrap(), "--calibration-key", "x_130"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // FC1's input_scale is the calibration amax / (448 * 6); FC2's comes from each expert's
    // activation output, so it differs from expert to expert.
    let x = read(&io, "x_130").to_f32_vec("x").unwrap();
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let ck = Checkpoint::open(&out).unwrap();
    let scalar = |n: &str| ck.tensor(n).unwrap().to_f32_vec(n).unwrap()[0];
    let p = "model.layers.0.mlp.experts.";
    let fc1 = scalar(&format!("{p}3.gate_proj.input_scale"));
    assert!((fc1 - amax / 2688.0).abs() <= 1e-6 * fc1, "{fc1} vs {}", amax / 2688.0);
    assert_eq!(
        fc1,
        scalar(&format!("{p}3.up_proj.input_scale")),
        "FC1's halves share their activation scale"
    );
    assert_ne!(
        scalar(&format!("{p}0.down_proj.input_scale")),
        scalar(&format!("{p}1.down_proj.input_scale"))
    );
    let worst = check_dir(&out, &src, quantized_bound("nvfp4"), &["--backend", "reference"]);
    eprintln!("olmoe-bfloat16 quantized to nvfp4 with calibration: worst relative L2 error {worst:.3e}");
    // A calibration tensor of the wrong width is refused naming it.
    let o = quantize_cmd(
        &Path::new(FIXTURES).join("olmoe-bfloat16"),
        "nvfp4",
        &d.join("bad"),
        &[
            "--calibration",
            out.join("model.safetensors").to_str().unwrap(),
            "--calibration-key",
            "model.norm.weight",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("calibration"), "{err}");
}

#[test]
fn quantize_refusals_exit_non_zero_naming_the_problem() {
    let d = scratch("quantize-refusals");
    // An already-quantized checkpoint.
    let o = quantize_cmd(
        &Path::new(QUANT_FIXTURES).join("gpt_oss-mxfp4"),
        "fp8-block",
        &d.join("a"),
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("already quantized"), "{err}");
    // An unknown format is a usage error listing the formats.
    let o = quantize_cmd(&Path::new(FIXTURES).join("olmoe-bfloat16"), "int3", &d.join("b"), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fp8-block") && err.contains("nvfp4") && err.contains("mxfp4"),
        "{err}"
    );
    // A shape the format cannot hold: Mixtral with I = 24 (not a multiple of 32) as MXFP4.
    let src = d.join("mixtral-i24");
    write_ragged_mixtral(&src);
    let o = quantize_cmd(&src, "mxfp4", &d.join("c"), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("experts.0.w2.weight") && err.contains("multiple of 32"),
        "{err}"
    );
    assert!(!d.join("c").join("model.safetensors").exists());
}

#[test]
fn help_describes_quantize() {
    let o = moe(&["quantize", "--help"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model",
        "--format",
        "--output",
        "fp8-block",
        "nvfp4",
        "mxfp4",
        "--max-shard-mib",
        "--calibration",
    ] {
        assert!(s.contains(flag), "--help lacks {flag}");
    }
}

/// The Mixtral bf16 fixture cut to intermediate size 24 (rows of w1/w3, columns of w2).
fn write_ragged_mixtral(dir: &Path) {
    let src = Path::new(FIXTURES).join("mixtral-bfloat16");
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 24.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = Vec::new();
    for (name, v) in st.tensors() {
        let (shape, data) = (v.shape().to_vec(), v.data());
        let es = 2; // bf16
        let (shape, data) = if name.ends_with(".w1.weight") || name.ends_with(".w3.weight") {
            (vec![24, shape[1]], data[..24 * shape[1] * es].to_vec())
        } else if name.ends_with(".w2.weight") {
            let cols = shape[1];
            let d: Vec<u8> = data.chunks(cols * es).flat_map(|row| row[..24 * es].to_vec()).collect();
            (vec![shape[0], 24], d)
        } else {
            (shape, data.to_vec())
        };
        out.push((name, shape, data, v.dtype()));
    }
    let views: Vec<_> = out
        .iter()
        .map(|(n, s, d, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

/// `--world N`: in-process expert-parallel ranks, every strategy, each rank a contiguous
/// slice of the rows; rank 0 writes the gathered `y`, which must match the oracle.
#[test]
fn world_ranks_match_the_oracle_through_the_cli() {
    for (name, tol) in [
        ("mixtral-float32", 1e-5),
        ("deepseek_v3-bfloat16", 3e-2),
        ("llama4-float32", 1e-5),
    ] {
        for (world, comm) in [("2", "allgather"), ("4", "alltoall"), ("3", "packed")] {
            check_fixture(name, tol, &["--world", world, "--comm", comm]);
        }
        check_fixture(
            name,
            tol,
            &["--world", "2", "--backend", "cpu-fused", "--max-tokens-per-chunk", "16"],
        );
        // Online EPLB with replicas: the output must not change while experts migrate.
        check_fixture(name, tol, &["--world", "4", "--eplb-slots", "24", "--iterations", "3"]);
    }
}

#[test]
fn eplb_plan_and_stats_round_trip_a_recorded_load() {
    let dir = scratch("eplb");
    let load = dir.join("load.json");
    let o = moe(&["run", "--tokens", "256", "--record-stats", load.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats = moe(&[
        "eplb",
        "stats",
        load.to_str().unwrap(),
        "--num-slots",
        "80",
        "--num-gpus",
        "8",
    ]);
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    assert!(String::from_utf8_lossy(&stats.stdout).contains("rank balancedness"));
    let first = dir.join("p1.json");
    let plan = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eplb",
            "plan",
            "--load",
            load.to_str().unwrap(),
            "--num-slots",
            "80",
            "--num-gpus",
            "8",
            "--output",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = moe(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let p1 = plan(&first, &["--algorithm", "deepseek"]);
    let (before, after) = (
        p1["balancedness_before"][0].as_f64().unwrap(),
        p1["balancedness"][0].as_f64().unwrap(),
    );
    assert!(after > before, "planning improves balance: {before} -> {after}");
    let p2 = plan(
        &dir.join("p2.json"),
        &["--previous", first.to_str().unwrap(), "--max-changed-slots", "4"],
    );
    assert!(p2["changed_slots"][0].as_u64().unwrap() <= 4);
    let bad = moe(&[
        "eplb",
        "plan",
        "--load",
        load.to_str().unwrap(),
        "--num-slots",
        "70",
        "--num-gpus",
        "8",
        "--output",
        "/dev/null",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("num_slots"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
