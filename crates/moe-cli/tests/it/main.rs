//! Integration tests of the `moe` binary: checkpoint runs against the transformers oracle
//! fixtures, the embedded default run, and error exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moe_core::Tensor;
use moe_hf::Checkpoint;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf");

fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe")).args(args).output().expect("run the moe binary")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-cli-it-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(path: &Path, key: &str) -> Tensor {
    Checkpoint::open_file(path).unwrap().tensor(key).unwrap().to_tensor(key).unwrap()
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
    let dir = Path::new(FIXTURES).join(name);
    let io = dir.join("io.safetensors");
    let out_dir = scratch(name);
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
        assert!(o.status.success(), "{name} T={t}: {}", String::from_utf8_lossy(&o.stderr));
        let y = read(&out, "y");
        let y_ref = read(&io, &format!("y_{t}"));
        assert_eq!(y.dtype(), y_ref.dtype(), "{name}: output dtype is the model's");
        let err = rel_l2(&y, &y_ref);
        assert!(err <= tol, "{name} T={t}: relative L2 error {err:.3e} > {tol:.0e}");
    }
    let _ = std::fs::remove_dir_all(out_dir);
}

#[test]
fn f32_checkpoint_matches_oracle() {
    check_fixture("qwen2_moe-float32", 1e-5, &[]);
}

#[test]
fn bf16_checkpoint_matches_oracle_chunked_on_cpu() {
    check_fixture("deepseek_v3-bfloat16", 3e-2, &["--backend", "cpu", "--max-tokens-per-chunk", "16"]);
}

#[test]
fn fused_checkpoint_matches_oracle_on_reference() {
    check_fixture("gpt_oss-bfloat16", 3e-2, &["--backend", "reference"]);
}

#[test]
fn json_summary_is_one_object() {
    let dir = Path::new(FIXTURES).join("llama4-float32");
    let io = dir.join("io.safetensors");
    let o = moe(&["run", "--model", dir.to_str().unwrap(), "--input", io.to_str().unwrap(), "--input-key", "x_7", "--json"]);
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
    let o = moe(&["run", "--model", dir.to_str().unwrap(), "--input", io.to_str().unwrap(), "--input-key", "no_such_key"]);
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
    let o = moe(&["run", "--model", dir.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("shape mismatch") && err.contains("`x`"), "{err}");

    let o = moe(&["run", "--model", dir.to_str().unwrap(), "--layer", "3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layer 3"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn help_describes_run() {
    let o = moe(&["run", "--help"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for flag in ["--model", "--layer", "--input", "--input-key", "--output", "--max-tokens-per-chunk", "--backend", "--json"] {
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
            e.path().join("config.json").exists().then(|| e.file_name().to_string_lossy().into_owned())
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
