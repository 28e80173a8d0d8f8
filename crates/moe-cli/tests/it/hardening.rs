//! Hostile files through the CLI. Outputs: an output that is an input is refused and the input
//! kept, a missing output directory fails before the run, and a write killed midway (a
//! file-size limit hit while writing) leaves the previous output whole. Load files: `eplb
//! stats` refuses what `eplb plan` refuses (negative, non-finite, ragged, overflowing loads).
//! Ranks: the error of a multi-rank run is the failing rank's cause, not another rank's report
//! that it left; a world past the thread bound is refused.
//!
//! Bounds (issue 18): every hostile number or file is refused naming the item, with no panic
//! or abort, under a 200 MB data limit and within 5 s ([`hostile`]); NaN weights are refused
//! at load unless trusted; the planner's work at 10^4 slots is bounded; `moe quantize`
//! replaces its output directory whole or not at all.

use std::path::Path;
use std::process::{Command, Output};

use super::{FIXTURES, moe, scratch};

/// `moe run` of fixture `mixtral-float32`'s layer 0 on `x_130` into `out`.
fn run_args<'a>(io: &'a str, out: &'a str) -> Vec<&'a str> {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../moe-testkit/fixtures/hf/mixtral-float32"
    );
    vec![
        "run",
        "--model",
        model,
        "--layer",
        "0",
        "--input",
        io,
        "--input-key",
        "x_130",
        "--output",
        out,
    ]
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_output_that_is_the_input_is_refused_and_the_input_kept() {
    let dir = scratch("out-is-in");
    let io = dir.join("io.safetensors");
    std::fs::copy(Path::new(FIXTURES).join("mixtral-float32/io.safetensors"), &io).unwrap();
    let before = std::fs::read(&io).unwrap();
    // The same file through another spelling of its path.
    let same = dir.join(".").join("io.safetensors");
    let o = moe(&run_args(io.to_str().unwrap(), same.to_str().unwrap()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&io).unwrap(), before, "the input is untouched");
    // A checkpoint file of the model is an input too.
    let model = Path::new(FIXTURES).join("mixtral-float32");
    let clobber = model.join("model.safetensors");
    let o = moe(&run_args(io.to_str().unwrap(), clobber.to_str().unwrap()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
}

#[test]
fn a_missing_output_directory_fails_before_the_run() {
    let dir = scratch("out-missing");
    let io = Path::new(FIXTURES).join("mixtral-float32/io.safetensors");
    let out = dir.join("no/such/dir/y.safetensors");
    let o = moe(&run_args(io.to_str().unwrap(), out.to_str().unwrap()));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("does not exist") && e.contains("--output"), "{e}");
    // Refused before the forward: nothing about loading or running was printed.
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    // `eplb plan` refuses an output that is its load file.
    let load = dir.join("load.json");
    std::fs::write(&load, r#"{"load": [[1, 2, 3, 4]]}"#).unwrap();
    let l = load.to_str().unwrap();
    let o = moe(&[
        "eplb",
        "plan",
        "--load",
        l,
        "--num-slots",
        "4",
        "--num-gpus",
        "2",
        "--output",
        l,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&load).unwrap().contains("load"),
        "the load file is untouched"
    );
}

#[test]
fn a_write_killed_midway_leaves_the_previous_output_whole() {
    let dir = scratch("out-killed");
    let io = Path::new(FIXTURES).join("mixtral-float32/io.safetensors");
    let out = dir.join("y.safetensors");
    let args = run_args(io.to_str().unwrap(), out.to_str().unwrap());
    let first = moe(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let previous = std::fs::read(&out).unwrap();
    assert!(
        previous.len() > 4096,
        "the output outgrows the limit below: {} bytes",
        previous.len()
    );
    // The same run under a 4 KiB file-size limit (8 blocks of 512 bytes): the write of the
    // output is cut off (SIGXFSZ, or EFBIG where the signal is ignored).
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "ulimit -f 8 && exec '{}' {}",
        env!("CARGO_BIN_EXE_moe"),
        quoted.join(" ")
    );
    let second = Command::new("sh").arg("-c").arg(&script).output().expect("run sh");
    assert!(
        !second.status.success(),
        "the limited run must fail: {}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        previous,
        "the previous output survives a write that was killed midway"
    );
}

#[test]
fn eplb_stats_refuses_the_loads_plan_refuses_naming_the_entry() {
    let dir = scratch("stats-bad");
    for (body, names) in [
        (r#"{"load": [[1, -2, 3, 4]]}"#, "load[0][1]"),
        (r#"{"load": [[1, 2, 3, 4], [1, 2]]}"#, "load[1]"),
        (r#"{"load": [[1e308, 1e308, 1e308, 1e308]]}"#, "load[0]"),
        (r#"{"load": []}"#, "load"),
    ] {
        let f = dir.join("load.json");
        std::fs::write(&f, body).unwrap();
        for cmd in [
            vec!["eplb", "stats", f.to_str().unwrap()],
            vec![
                "eplb",
                "plan",
                "--load",
                f.to_str().unwrap(),
                "--num-slots",
                "4",
                "--num-gpus",
                "2",
                "--output",
                "/dev/null",
            ],
        ] {
            let o = moe(&cmd);
            assert!(!o.status.success(), "{cmd:?} on {body}: exit 0");
            assert!(stderr(&o).contains(names), "{cmd:?} on {body}: {}", stderr(&o));
            assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        }
    }
}

#[test]
fn a_failing_rank_reports_its_own_cause_not_its_peers_departure() {
    let dir = scratch("rank-cause");
    // Fixture rows with one NaN in the second half: rank 1 of 2 refuses it.
    let io = Path::new(FIXTURES).join("mixtral-float32/io.safetensors");
    let bytes = std::fs::read(&io).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = st.tensor("x_130").unwrap();
    let (shape, mut data) = (x.shape().to_vec(), x.data().to_vec());
    let at = 4 * (100 * shape[1] + 3);
    data[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &data).unwrap();
    let input = dir.join("x.safetensors");
    std::fs::write(&input, safetensors::serialize([("x", view)], None).unwrap()).unwrap();
    let model = Path::new(FIXTURES).join("mixtral-float32");
    let (m, i) = (model.to_str().unwrap(), input.to_str().unwrap());
    let world = |n: &str| {
        moe(&[
            "run",
            "--model",
            m,
            "--layer",
            "0",
            "--input",
            i,
            "--input-key",
            "x",
            "--world",
            n,
        ])
    };
    let o = world("2");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("rank 1") && e.contains("non-finite"), "{e}");
    assert!(
        !e.contains("left the group"),
        "the peer's departure is not the cause: {e}"
    );
    // One thread per rank, bounded.
    let o = world("5000");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--world"), "{}", stderr(&o));
}

/// Data limit of a hostile case (`ulimit -d`, KiB): heap and private writable mappings,
/// which bounds the process's anonymous memory (the RSS that allocations make).
const DATA_LIMIT_KIB: u64 = 200 * 1024;

/// Runs `moe args` under the data limit with two rayon threads and asserts what a hostile
/// input must get: a non-zero exit, a message containing `needle`, no panic and no
/// allocation failure, in under 5 s. Returns stderr.
fn hostile(args: &[&str], needle: &str) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "ulimit -d {DATA_LIMIT_KIB} && exec '{}' {}",
        env!("CARGO_BIN_EXE_moe"),
        quoted.join(" ")
    );
    let start = std::time::Instant::now();
    let o = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run sh");
    let secs = start.elapsed().as_secs_f64();
    let e = stderr(&o);
    assert!(!o.status.success(), "{args:?}: exit 0\n{e}");
    // Exit 1 (our error) or 2 (clap's usage error); a signal (abort, SIGSEGV) has no code.
    assert!(matches!(o.status.code(), Some(1 | 2)), "{args:?}: {:?}\n{e}", o.status);
    assert!(e.contains(needle), "{args:?}: no `{needle}` in\n{e}");
    assert!(
        !e.contains("panicked") && !e.contains("memory allocation"),
        "{args:?}:\n{e}"
    );
    assert!(secs < 5.0, "{args:?}: {secs:.2} s");
    e
}

/// A copy of fixture `name` in `dir` with `edit` applied to its config.json.
fn edited_fixture(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let src = Path::new(FIXTURES).join(name);
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(dst.join("config.json"), c.to_string()).unwrap();
    dst
}

fn io_fixture() -> String {
    Path::new(FIXTURES)
        .join("mixtral-float32/io.safetensors")
        .display()
        .to_string()
}

#[test]
fn huge_counts_in_config_json_are_refused_naming_the_key() {
    let dir = scratch("bounds-config");
    let io = io_fixture();
    let layers = edited_fixture(&dir, "mixtral-float32", |c| {
        c["num_hidden_layers"] = 1_000_000_000_000u64.into()
    });
    let m = layers.to_str().unwrap();
    // Without --layer the first MoE layer is looked up: nothing is collected eagerly.
    hostile(
        &["run", "--model", m, "--input", &io, "--input-key", "x_130"],
        "num_hidden_layers",
    );
    // DeepSeek's shared size is moe_intermediate_size * n_shared_experts: 2^59 + 1 wraps.
    let shared = edited_fixture(&dir, "deepseek_v3-float32", |c| {
        c["n_shared_experts"] = 576_460_752_303_423_489u64.into();
    });
    hostile(&["run", "--model", shared.to_str().unwrap()], "n_shared_experts");
    // Llama 4 derives its MoE layers from the interleave step, as a rule.
    let llama = edited_fixture(&dir, "llama4-float32", |c| {
        c.as_object_mut().unwrap().remove("moe_layers");
        c["num_hidden_layers"] = 1_000_000_000_000u64.into();
    });
    hostile(&["run", "--model", llama.to_str().unwrap()], "num_hidden_layers");
}

#[test]
fn huge_flags_are_refused_naming_the_flag() {
    let dir = scratch("bounds-flags");
    for (extra, needle) in [
        (["--eplb-slots", "1000000000000"], "--eplb-slots"),
        (
            ["--max-tokens-per-chunk", "9223372036854775808"],
            "--max-tokens-per-chunk",
        ),
    ] {
        hostile_world_run(&extra, needle);
    }
    hostile(&["run", "--tokens", "1000000000"], "--tokens");
    hostile(&["run", "--tokens", "288230376151711744"], "--tokens");
    let load = dir.join("load.json");
    std::fs::write(&load, r#"{"load": [[5, 1, 1, 1]]}"#).unwrap();
    let l = load.to_str().unwrap();
    let plan = |extra: &[&str]| {
        let mut a = vec!["eplb", "plan", "--load", l, "--num-gpus", "2", "--output", "/dev/null"];
        a.extend_from_slice(extra);
        hostile(&a, extra[0]);
    };
    plan(&["--num-slots", "1000000000000"]);
    plan(&["--first-layer", "18446744073709551615", "--num-slots", "4", "--yaml"]);
    // Within the flag's bound, but past the layer limit with the file's two layers added.
    let two = dir.join("two.json");
    std::fs::write(&two, r#"{"load": [[5, 1, 1, 1], [1, 1, 1, 5]]}"#).unwrap();
    let e = hostile(
        &[
            "eplb",
            "plan",
            "--load",
            two.to_str().unwrap(),
            "--num-slots",
            "4",
            "--num-gpus",
            "2",
            "--yaml",
            "--output",
            "/dev/null",
            "--first-layer",
            "65535",
        ],
        "--first-layer 65535",
    );
    assert!(e.contains("layer limit"), "{e}");
}

#[test]
fn hostile_placement_files_are_refused_before_they_are_expanded() {
    let dir = scratch("bounds-yaml");
    let deep = format!("{}1\n", "- ".repeat(200_000));
    for (body, needle) in [
        ("num_slots: 1000000000000\n".to_string(), "num_slots"),
        (
            "num_slots: 8\ninitial_global_assignments:\n  0: [0, 1, 2, 3, 4, 5, 6, 1000000000000]\n".to_string(),
            "initial_global_assignments[0][7]",
        ),
        (format!("num_slots: 8\nx: {}1\n", "[".repeat(200_000)), "placement"),
        (deep, "nests deeper than 32"),
        ("a: &a [1, 2]\nb: [*a, *a, *a, *a]\n".to_string(), "alias"),
        (
            format!("num_slots: 8\n#{}\n", "x".repeat(33 << 20)),
            "larger than the limit",
        ),
    ] {
        let f = dir.join("placement.yaml");
        std::fs::write(&f, &body).unwrap();
        hostile_world_run(&["--placement", f.to_str().unwrap()], needle);
    }
}

/// [`hostile`] of `moe run` of the Mixtral fixture over two ranks with `extra` flags.
fn hostile_world_run(extra: &[&str], needle: &str) -> String {
    let io = io_fixture();
    let m = Path::new(FIXTURES).join("mixtral-float32").display().to_string();
    let base = [
        "run",
        "--model",
        &m,
        "--input",
        &io,
        "--input-key",
        "x_130",
        "--world",
        "2",
    ];
    hostile(&[&base[..], extra].concat(), needle)
}

#[test]
fn a_safetensors_header_of_a_million_entries_is_refused_before_parsing() {
    let dir = scratch("bounds-header");
    // 300k empty tensors: 8 MB of header, over a gigabyte to parse.
    let mut header = String::from("{");
    for i in 0..300_000 {
        header.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}},"
        ));
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let f = dir.join("x.safetensors");
    std::fs::write(&f, &bytes).unwrap();
    let m = Path::new(FIXTURES).join("mixtral-float32").display().to_string();
    let e = hostile(
        &["run", "--model", &m, "--input", f.to_str().unwrap()],
        "tensors, the limit",
    );
    assert!(e.contains("x.safetensors"), "{e}");
    // A header length past the bound is refused from its 8 bytes.
    std::fs::write(&f, [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat()).unwrap();
    hostile(&["run", "--model", &m, "--input", f.to_str().unwrap()], "header of");
}

#[test]
fn nan_weights_are_refused_at_load_naming_the_tensor_unless_trusted() {
    let dir = scratch("finite");
    let io = io_fixture();
    let model = edited_fixture(&dir, "mixtral-float32", |_| {});
    // One NaN in expert 3's w2, element 5.
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.0.block_sparse_moe.experts.3.w2.weight";
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let (_, _, shape, data) = tensors.iter_mut().find(|t| t.0 == name).expect("fixture tensor");
    data[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    let cols = shape[1];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let m = model.to_str().unwrap();
    let args = [
        "run",
        "--model",
        m,
        "--layer",
        "0",
        "--input",
        &io,
        "--input-key",
        "x_130",
    ];
    let e = hostile(&args, name);
    assert!(
        e.contains("non-finite") && e.contains(&format!("element 5 (row {}, column {})", 5 / cols, 5 % cols)),
        "{e}"
    );
    // Over ranks too, checked once before the ranks start.
    hostile(&[&args[..], &["--world", "2"]].concat(), name);
    // Trusted: the load proceeds, and the debug check names the first non-finite output.
    let trusted = moe(&[&args[..], &["--trust-weights"]].concat());
    assert!(trusted.status.success(), "{}", stderr(&trusted));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("finite check skipped"));
    hostile(
        &[&args[..], &["--trust-weights", "--check-finite"]].concat(),
        "(--check-finite)",
    );
    // The clean fixture passes both checks and says what it checked.
    let clean = Path::new(FIXTURES).join("mixtral-float32").display().to_string();
    let o = moe(&[
        "run",
        "--model",
        &clean,
        "--input",
        &io,
        "--input-key",
        "x_130",
        "--check-finite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("finite, checked in"));
}

#[test]
fn the_default_planner_at_ten_thousand_slots_finishes_in_seconds() {
    let dir = scratch("planner");
    // 256 skewed expert loads (a deterministic power law).
    let load: Vec<f64> = (0..256u64)
        .map(|i| 100.0 * ((i * 7919) % 256 + 1) as f64 / ((i % 17) + 1) as f64)
        .collect();
    let f = dir.join("load.json");
    std::fs::write(&f, serde_json::json!({ "load": [load] }).to_string()).unwrap();
    let start = std::time::Instant::now();
    let o = moe(&[
        "eplb",
        "plan",
        "--load",
        f.to_str().unwrap(),
        "--num-slots",
        "10000",
        "--num-gpus",
        "8",
        "--output",
        dir.join("p.json").to_str().unwrap(),
    ]);
    let secs = start.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    // The direct local search took 86 s here in a release build.
    assert!(secs < 30.0, "{secs:.1} s");
}

#[test]
fn quantize_replaces_its_output_whole_or_not_at_all() {
    let dir = scratch("quantize-atomic");
    let model = Path::new(FIXTURES).join("qwen3_moe-bfloat16");
    let out = dir.join("q");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let args = ["quantize", "--model", m, "--format", "fp8-block", "--output", o];
    let first = moe(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let snapshot = |d: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let previous = snapshot(&out);
    // A second run killed while writing (a 64 KiB file-size limit) leaves the first whole.
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "ulimit -f 128 && exec '{}' {}",
        env!("CARGO_BIN_EXE_moe"),
        quoted.join(" ")
    );
    let killed = Command::new("sh").arg("-c").arg(&script).output().expect("run sh");
    assert!(!killed.status.success(), "the limited run must fail");
    assert_eq!(snapshot(&out), previous, "the previous output survives");
    // A run that completes replaces it (with equal bytes: quantization is deterministic).
    let again = moe(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(snapshot(&out), previous);
    // A directory that is not a quantized checkpoint is never replaced.
    let other = dir.join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("todo.txt"), "keep me").unwrap();
    let e = hostile(
        &[
            "quantize",
            "--model",
            m,
            "--format",
            "fp8-block",
            "--output",
            other.to_str().unwrap(),
        ],
        "not a quantized checkpoint",
    );
    assert!(e.contains("notes"), "{e}");
    assert_eq!(std::fs::read_to_string(other.join("todo.txt")).unwrap(), "keep me");
}
