//! The layer with expert parallelism over NCCL (feature `nccl`), against a single-GPU run of
//! the whole layer. Its own launcher: `nccl-layer --world N` spawns N copies of itself (rank r
//! on GPU r; `NCCL_LAYER_*` variables, the rest of the environment inherited), waits for them
//! with a timeout and reports every child's exit status.
//!
//! Every rank builds the same seeded random layer twice on its GPU with the `cuda` backend: a
//! world of one over all tokens (the reference), and rank r of an EP world over `NcclGroup`
//! with attention-DP, fed its slice of the tokens. Cases: f32 and bf16, the AllToAll,
//! AllGather+ReduceScatter and PackedAllGather strategies, device-resident and host inputs,
//! chunking, and a rank without tokens. The rank's output must match its rows of the reference
//! within a relative L2 error of 1e-5 (f32) or 2e-2 (bf16). Exit status 0 iff every case
//! passed on every rank.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use moe::cuda::{CudaDevice, download};
use moe::{CreateOptions, ForwardOptions, LayerParts, create_moe_with};
use moe_comm::NcclGroup;
use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::*;

const ENV_RANK: &str = "NCCL_LAYER_RANK";
const ENV_WORLD: &str = "NCCL_LAYER_WORLD";
const ENV_ID: &str = "NCCL_LAYER_ID";
const E: usize = 16;
const H: usize = 256;
const I: usize = 128;
const TOP_K: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    match (std::env::var(ENV_RANK), std::env::var(ENV_WORLD), std::env::var(ENV_ID)) {
        (Ok(r), Ok(w), Ok(id)) => match (r.parse(), w.parse()) {
            (Ok(rank), Ok(world)) => child(rank, world, &id),
            _ => ExitCode::from(2),
        },
        _ => {
            let args: Vec<String> = std::env::args().collect();
            let world = args
                .iter()
                .position(|a| a == "--world")
                .and_then(|i| args.get(i + 1))
                .and_then(|w| w.parse::<usize>().ok());
            match world {
                Some(w) if w >= 1 => launch(w),
                _ => {
                    eprintln!("usage: nccl-layer --world N");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn launch(world: usize) -> ExitCode {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("nccl-layer-{}-{stamp}", std::process::id()));
    let exe = std::env::current_exe();
    let (Ok(()), Ok(exe)) = (std::fs::create_dir_all(&dir), exe) else {
        eprintln!("cannot prepare {} or locate this binary", dir.display());
        return ExitCode::FAILURE;
    };
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children: Vec<Option<Child>> = (0..world)
        .map(|rank| {
            let mut c = Command::new(&exe)
                .env(ENV_RANK, rank.to_string())
                .env(ENV_WORLD, world.to_string())
                .env(ENV_ID, dir.join("nccl.id"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| eprintln!("spawning rank {rank}: {e}"))
                .ok()?;
            forward(rank, c.stdout.take(), &tx);
            forward(rank, c.stderr.take(), &tx);
            Some(c)
        })
        .collect();
    drop(tx);
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; world];
    let start = Instant::now();
    loop {
        while let Ok((rank, line)) = rx.recv_timeout(Duration::from_millis(50)) {
            println!("[rank {rank}] {line}");
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(Ok(Some(st))) = slot.as_mut().map(Child::try_wait) {
                status[rank] = Some(st);
                *slot = None;
            }
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if start.elapsed() > TIMEOUT {
            for (rank, slot) in children.iter_mut().enumerate() {
                if let Some(c) = slot.as_mut() {
                    let _ = c.kill();
                    status[rank] = c.wait().ok();
                    println!("rank {rank}: killed after {} s", TIMEOUT.as_secs());
                }
                *slot = None;
            }
            break;
        }
    }
    while let Ok((rank, line)) = rx.recv_timeout(Duration::from_millis(200)) {
        println!("[rank {rank}] {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut ok = true;
    for (rank, st) in status.iter().enumerate() {
        let good = st.is_some_and(|s| s.success());
        ok &= good;
        println!(
            "rank {rank}: {}",
            st.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into())
        );
    }
    println!("RESULT: {}", if ok { "PASS" } else { "FAIL" });
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn forward(rank: usize, pipe: Option<impl Read + Send + 'static>, tx: &mpsc::Sender<(usize, String)>) {
    let Some(pipe) = pipe else { return };
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(std::result::Result::ok) {
            if tx.send((rank, line)).is_err() {
                break;
            }
        }
    });
}

/// Deterministic values in [-1, 1) from a counter hash, identical on every rank.
fn value(seed: u64, i: usize) -> f32 {
    let z = prng::mix64(seed.wrapping_mul(prng::GAMMA).wrapping_add(i as u64));
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn tensor(dtype: DType, seed: u64, shape: Vec<usize>, scale: f32) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| value(seed, i) * scale).collect();
    Tensor::from_f32_as(dtype, shape, &v).expect("tensor")
}

fn weights(dtype: DType) -> MemoryWeights {
    let mut w = MemoryWeights::new();
    let (sh, si) = (2.0 / (H as f32).sqrt(), 2.0 / (I as f32).sqrt());
    for e in 0..E {
        let s = e as u64;
        w.insert(
            expert_tensor_name(e, Proj::W1, "weight"),
            tensor(dtype, 100 + s, vec![I, H], sh),
        );
        w.insert(
            expert_tensor_name(e, Proj::W3, "weight"),
            tensor(dtype, 200 + s, vec![I, H], sh),
        );
        w.insert(
            expert_tensor_name(e, Proj::W2, "weight"),
            tensor(dtype, 300 + s, vec![H, I], si),
        );
    }
    w
}

fn config(dtype: DType, device: usize) -> MoeConfig {
    let mut c = MoeConfig::new(E, H, I, dtype, RoutingMethod::Renormalize { top_k: TOP_K });
    c.backend = Some("cuda".into());
    c.cuda_device = Some(device);
    c
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

struct Case {
    dtype: DType,
    comm: &'static str,
    chunk: Option<usize>,
    device_inputs: bool,
    empty_rank: bool,
}

fn run_case(g: &Arc<NcclGroup>, dev: &CudaDevice, case: &Case) -> Result<f64> {
    let (rank, world) = (g.rank(), g.size());
    let list: Vec<usize> = (0..world)
        .map(|r| if case.empty_rank && r == 1 { 0 } else { 24 + 8 * r })
        .collect();
    let total: usize = list.iter().sum();
    let x = tensor(case.dtype, 1, vec![total, H], 1.0);
    let logits = tensor(DType::F32, 2, vec![total, E], 2.0);
    let w = weights(case.dtype);

    let mut single = create_moe_with(config(case.dtype, rank), CreateOptions::default())?;
    single.load_weights(&w)?;
    let want = download(&single.forward(&dev.upload(&x)?, &dev.upload(&logits)?)?)?;
    let start: usize = list[..rank].iter().sum();
    let want = want.narrow_rows(start, list[rank])?.to_f32_vec("want")?;

    let mut c = config(case.dtype, rank);
    c.moe_max_num_tokens = case.chunk;
    c.parallel = ParallelConfig {
        ep_size: world,
        ep_rank: rank,
        tp_size: 1,
        tp_rank: 0,
        attention_dp: true,
    };
    let parts = LayerParts {
        group: Some(g.clone() as Arc<dyn ProcessGroup>),
        comm_choice: case.comm.into(),
        comm_timeout: Duration::from_secs(60),
        ..LayerParts::default()
    };
    let mut layer = create_moe_with(
        c,
        CreateOptions {
            parts,
            ..CreateOptions::default()
        },
    )?;
    layer.load_weights(&w)?;
    let (xs, ls) = (
        x.narrow_rows(start, list[rank])?,
        logits.narrow_rows(start, list[rank])?,
    );
    let (xs, ls) = if case.device_inputs {
        (dev.upload(&xs)?, dev.upload(&ls)?)
    } else {
        (xs, ls)
    };
    let opts = ForwardOptions {
        all_rank_num_tokens: Some(list.clone()),
        use_dp_padding: false,
    };
    let out = layer.forward_with(&xs, &ls, &opts)?;
    if case.device_inputs == out.is_host() {
        return Err(MoeError::lifecycle(format!(
            "output on the {} for {} inputs",
            if out.is_host() { "host" } else { "device" },
            if case.device_inputs { "device" } else { "host" }
        )));
    }
    let got = download(&out)?.to_f32_vec("got")?;
    if got.len() != want.len() {
        return Err(MoeError::shape(
            "EP output",
            format!("{} values", want.len()),
            out.shape(),
        ));
    }
    Ok(rel_l2(&got, &want))
}

/// A fresh communicator for case `i`, so a case that fails mid-collective (and aborts its
/// communicator) leaves the next one intact.
fn group(id: &str, i: usize, rank: usize, world: usize) -> Result<Arc<NcclGroup>> {
    let deadline = Deadline::after(Duration::from_secs(120));
    NcclGroup::from_unique_id_file(format!("{id}.{i}"), rank, world, rank, deadline).map(Arc::new)
}

fn child(rank: usize, world: usize, id: &str) -> ExitCode {
    let dev = match CudaDevice::new(rank) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rank {rank}: opening GPU {rank}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("rank {rank} of {world}: {}", dev.name());
    let mut cases = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        for comm in ["alltoall", "allgather", "packed"] {
            for device_inputs in [true, false] {
                cases.push(Case {
                    dtype,
                    comm,
                    chunk: None,
                    device_inputs,
                    empty_rank: false,
                });
            }
        }
        cases.push(Case {
            dtype,
            comm: "alltoall",
            chunk: Some(16),
            device_inputs: true,
            empty_rank: false,
        });
        if world > 1 {
            cases.push(Case {
                dtype,
                comm: "alltoall",
                chunk: None,
                device_inputs: true,
                empty_rank: true,
            });
        }
    }
    let mut failures = 0;
    for (i, case) in cases.iter().enumerate() {
        let tol = if case.dtype == DType::F32 { 1e-5 } else { 2e-2 };
        let name = format!(
            "{} {} chunk {:?} {} inputs{}",
            case.dtype,
            case.comm,
            case.chunk,
            if case.device_inputs { "device" } else { "host" },
            if case.empty_rank { ", rank 1 empty" } else { "" }
        );
        match group(id, i, rank, world).and_then(|g| run_case(&g, &dev, case)) {
            Ok(err) if err <= tol => println!("PASS {name}: rel L2 {err:.3e} (tolerance {tol:e})"),
            Ok(err) => {
                failures += 1;
                println!("FAIL {name}: rel L2 {err:.3e} > {tol:e}");
            }
            Err(e) => {
                failures += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    println!(
        "rank {rank}: {} of {} cases passed",
        cases.len() - failures,
        cases.len()
    );
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
