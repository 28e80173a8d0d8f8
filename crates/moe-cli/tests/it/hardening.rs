//! Hostile files through the CLI. Outputs: an output that is an input is refused and the input
//! kept, a missing output directory fails before the run, and a write killed midway (a
//! file-size limit hit while writing) leaves the previous output whole. Load files: `eplb
//! stats` refuses what `eplb plan` refuses (negative, non-finite, ragged, overflowing loads).
//! Ranks: the error of a multi-rank run is the failing rank's cause, not another rank's report
//! that it left; a world past the thread bound is refused.

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
