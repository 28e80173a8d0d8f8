//! `moe bench --backend cuda`: the same presets and token counts as the CPU harness, on a GPU.
//!
//! Per preset: the weights are generated on the host ([`crate::generated`], the cache's
//! values without the cache) and handed to a layer built through `moe::create_moe` with the
//! device backend pinned; per row, `x` (bf16, N(0, 1)) and the router logits (f32, N(0, 1))
//! are uploaded once, then the forward runs on device tensors: untimed warm-up forwards
//! (the first compiles the kernels), then each timed forward between two device events
//! (`CudaDevice::timer`), and the row reports the median.
//!
//! Each row is held to a floor computed from ceilings measured on the same device in the same
//! run: `floor = max(bytes of the experts the routing selected / copy bandwidth, routed FLOPs /
//! matmul rate)`, where the matmul rate is cuBLAS's bf16 GEMM for 16- and 32-bit weights and
//! cuBLASLt's e4m3 GEMM for FP8 weights (whose bytes are the codes plus the block scales); a
//! device without an FP8 GEMM (below sm_89) holds FP8 rows to the bf16 rate and says so. The
//! selected experts are counted on the host from the same logits with the same routing. The
//! layer is the routed experts only: `moe::ConfigurableMoe` has no shared expert (DeepSeek-V3's
//! one shared expert, `I = 2048`, belongs to the model), so FLOPs, bytes and the floor count
//! what runs.
//!
//! Each row is timed twice ([`GraphTiming`]): eagerly, every forward issued from the host, and
//! as a CUDA graph, one forward captured (`CudaDevice::capture`) and replayed. The eager time
//! includes the host's launch latency of every kernel, which an inference engine hides by
//! replaying its decode step as a graph; issue #6 asks for a decode path that can be captured.
//! The graph time is what such an engine sees, so both are reported, each against the floor.

use std::time::Instant;

use moe::ConfigurableMoe;
use moe::cuda::{CudaDevice, kernel_loads, kernel_loads_summary};
use moe_core::Tensor;
use serde_json::Value;

use crate::ceilings::Ceilings;
use crate::error::{BenchError, Context, Result, chain};
use crate::generated::GeneratedWeights;
use crate::preset::WeightFormat;
use crate::runner::{self, Row};
use crate::{BenchOptions, Plan, Ui, cache, report};

/// Untimed forwards before the timed ones (at least one always runs: it compiles kernels).
pub const DEFAULT_WARMUP: usize = 5;
/// Timed forwards per row.
pub const DEFAULT_REPEATS: usize = 25;
/// Size of the copy-bandwidth buffer (far above the 50 MB L2 of an H100).
pub const DEFAULT_COPY_MIB: u64 = 1024;
/// Side of the bf16 and e4m3 matmul ceilings' square problems.
pub const DEFAULT_MATMUL_N: u64 = 8192;
/// Timed runs of each ceiling.
const CEILING_ITERS: usize = 20;

/// What the layer of a device row runs, said once per run.
pub const SHARED_EXPERT_NOTE: &str = "the bench layer is the routed experts only (moe::ConfigurableMoe has no shared expert; DeepSeek-V3's shared expert, I=2048, belongs to the model): FLOPs, bytes and floors count what runs";

/// Whether `backend` runs on a GPU (its rows take this path).
pub fn is_device_backend(backend: &str) -> bool {
    backend == "cuda" || backend.starts_with("cuda-")
}

/// The device's ceilings, measured in the run.
#[derive(Clone, Debug)]
pub struct DeviceCeilings {
    pub card: String,
    pub location: String,
    /// Bytes of the copied buffer (each copy reads and writes this many).
    pub copy_bytes: u64,
    /// Bytes read plus bytes written per second, in GB/s.
    pub copy_gbps: f64,
    pub matmul_n: usize,
    /// cuBLAS bf16 GEMM, TFLOP/s.
    pub matmul_tflops: f64,
    /// cuBLASLt e4m3 GEMM (bf16 out, f32 accumulate), TFLOP/s, or why it could not be
    /// measured (no FP8 tensor cores below sm_89, no libcublasLt): FP8 rows then use the bf16
    /// rate.
    pub fp8_matmul_tflops: Result<f64, String>,
}

/// The matmul rate that holds a row's FLOPs (see [`DeviceCeilings::floor_rate`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloorRate {
    /// `"fp8"` or `"bf16"`.
    pub kind: &'static str,
    pub tflops: f64,
}

impl DeviceCeilings {
    pub fn measure(dev: &CudaDevice, copy_bytes: u64, matmul_n: usize) -> Result<DeviceCeilings> {
        let copy_gbps = moe::cuda::copy_bandwidth_gbps(dev, copy_bytes as usize, CEILING_ITERS)
            .with_context(|| format!("measuring the copy bandwidth of {}", dev.location()))?;
        let matmul_tflops = moe::cuda::bf16_matmul_tflops(dev, matmul_n, CEILING_ITERS)
            .with_context(|| format!("measuring the bf16 matmul rate of {}", dev.location()))?;
        let fp8_matmul_tflops = moe::cuda::fp8_matmul_tflops(dev, matmul_n, CEILING_ITERS).map_err(|e| e.to_string());
        Ok(DeviceCeilings {
            card: dev.name().to_string(),
            location: dev.location(),
            copy_bytes,
            copy_gbps,
            matmul_n,
            matmul_tflops,
            fp8_matmul_tflops,
        })
    }

    /// The matmul rate a row's FLOPs are held to: the e4m3 rate for FP8-block weights (when it
    /// was measured), the bf16 rate otherwise.
    pub fn floor_rate(&self, row: &Row) -> FloorRate {
        match (&self.fp8_matmul_tflops, row.weights == WeightFormat::Fp8Block.name()) {
            (Ok(tflops), true) => FloorRate {
                kind: "fp8",
                tflops: *tflops,
            },
            _ => FloorRate {
                kind: "bf16",
                tflops: self.matmul_tflops,
            },
        }
    }

    /// The same numbers as the CPU harness's [`Ceilings`] for `row`, so rows compute their
    /// ratios the same way (GEMM = the row's matmul rate, read bandwidth = the copy bandwidth).
    pub fn as_ceilings(&self, row: &Row) -> Ceilings {
        Ceilings {
            gemm_n: self.matmul_n,
            gemm_gflops: self.floor_rate(row).tflops * 1e3,
            gemv_bytes: self.copy_bytes,
            read_gbps: self.copy_gbps,
            threads: 0,
        }
    }

    pub fn line(&self) -> String {
        let fp8 = match &self.fp8_matmul_tflops {
            Ok(t) => format!(
                "{t:.1} TFLOP/s; balance {:.0} FLOP/byte (bf16), {:.0} (fp8)",
                self.matmul_tflops * 1e3 / self.copy_gbps,
                t * 1e3 / self.copy_gbps
            ),
            Err(e) => format!(
                "unavailable ({e}): FP8 rows use the bf16 rate; balance {:.0} FLOP/byte",
                self.matmul_tflops * 1e3 / self.copy_gbps
            ),
        };
        format!(
            "ceilings ({} {}): device copy of {} MiB {:.0} GB/s (read + written); bf16 matmul {n}x{n}x{n} (cuBLAS, f32 accumulate) {:.1} TFLOP/s; FP8 matmul {n}x{n}x{n} (cuBLASLt e4m3 x e4m3 -> bf16, f32 accumulate) {fp8}",
            self.location,
            self.card,
            self.copy_bytes >> 20,
            self.copy_gbps,
            self.matmul_tflops,
            n = self.matmul_n,
        )
    }
}

/// The row's floor in ms: `max(weight bytes / copy bandwidth, FLOPs / matmul rate)`, with the
/// matmul rate of [`DeviceCeilings::floor_rate`] (FP8 rows: the e4m3 rate; their weight bytes
/// are codes plus scales).
pub fn floor_ms(row: &Row, c: &DeviceCeilings) -> f64 {
    let read_s = row.weight_bytes as f64 / (c.copy_gbps * 1e9);
    let compute_s = row.gflop * 1e9 / (c.floor_rate(row).tflops * 1e12);
    read_s.max(compute_s) * 1e3
}

/// A row's forward replayed as a CUDA graph (module doc): the median of the timed replays, or
/// why the forward could not be captured (the row is still reported, with its eager time).
#[derive(Clone, Debug, PartialEq)]
pub enum GraphTiming {
    MedianMs(f64),
    Failed(String),
}

/// The CPU row's JSON object plus `card`, `floor_ms` and `ratio_to_floor` (median / floor:
/// 1.0 is at the floor, 2.0 twice as slow as it), the matmul rate the floor used
/// (`floor_matmul`: `"fp8"` or `"bf16"`, and `floor_matmul_tflops`) next to both measured
/// rates (`fp8_matmul_tflops` is null, with `fp8_matmul_error`, when it could not be measured),
/// and the graph replay's `graph_ms` and `graph_ratio_to_floor`, or `graph_error` when the
/// forward could not be captured.
pub fn row_json(row: &Row, c: &DeviceCeilings, graph: &GraphTiming) -> Value {
    let mut v = report::row_json(row, &c.as_ceilings(row), None);
    let floor = floor_ms(row, c);
    let rate = c.floor_rate(row);
    v["card"] = Value::from(c.card.clone());
    v["floor_matmul"] = Value::from(rate.kind);
    v["floor_matmul_tflops"] = Value::from(rate.tflops);
    v["bf16_matmul_tflops"] = Value::from(c.matmul_tflops);
    match &c.fp8_matmul_tflops {
        Ok(t) => v["fp8_matmul_tflops"] = Value::from(*t),
        Err(e) => {
            v["fp8_matmul_tflops"] = Value::Null;
            v["fp8_matmul_error"] = Value::from(e.clone());
        }
    }
    v["floor_ms"] = Value::from(floor);
    v["ratio_to_floor"] = Value::from(row.median_ms / floor);
    match graph {
        GraphTiming::MedianMs(ms) => {
            v["graph_ms"] = Value::from(*ms);
            v["graph_ratio_to_floor"] = Value::from(ms / floor);
        }
        GraphTiming::Failed(e) => v["graph_error"] = Value::from(e.clone()),
    }
    v
}

/// The text table of device rows, one line per row (every preset and token count run), the
/// matmul rate of the floor (`mm`: fp8 or bf16), the graph replay's median and its ratio to the
/// floor last (`-` where the forward could not be captured).
pub fn table(rows: &[(Row, GraphTiming)], c: &DeviceCeilings) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:<9} {:>5} {:<7} {:>7} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:<4} {:>9} {:>9}",
        "preset",
        "weights",
        "T",
        "backend",
        "experts",
        "median ms",
        "floor ms",
        "x floor",
        "TFLOP/s",
        "GB/s",
        "bound",
        "mm",
        "graph ms",
        "g x floor"
    );
    for (r, graph) in rows {
        let floor = floor_ms(r, c);
        let (graph_ms, graph_x) = match graph {
            GraphTiming::MedianMs(ms) => (format!("{ms:.3}"), format!("{:.2}", ms / floor)),
            GraphTiming::Failed(_) => ("-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            s,
            "{:<14} {:<9} {:>5} {:<7} {:>7} {:>10.3} {:>9.3} {:>8.2} {:>8.1} {:>8.0} {:>7} {:<4} {:>9} {:>9}",
            r.preset,
            r.weights,
            r.tokens,
            r.backend,
            r.experts_touched,
            r.median_ms,
            floor,
            r.median_ms / floor,
            r.gflops / 1e3,
            r.weight_gbps,
            report::bound(r, &c.as_ceilings(r)),
            c.floor_rate(r).kind,
            graph_ms,
            graph_x
        );
    }
    s
}

/// Whether every element of `y` (device or host) is finite.
fn all_finite(y: &Tensor) -> Result<bool> {
    let host = moe::cuda::download(y).context("downloading the output")?;
    Ok(host.to_f32_vec("output")?.iter().all(|v| v.is_finite()))
}

/// Cold start (issue 16): the first forward of a freshly built layer at `tokens`, timed on
/// the host up to the synchronised result, with the kernel modules it loaded (ahead of time,
/// disk cache or NVRTC) and the time since the process started, less what was spent before
/// it on the preset's weights (generation and upload, `weights_s`) and on the device's
/// ceilings (`ceilings_s`), which the cold-start figure excludes.
fn first_forward(
    dev: &CudaDevice,
    layer: &mut ConfigurableMoe,
    x_all: &Tensor,
    logits_all: &Tensor,
    tokens: usize,
    (weights_s, ceilings_s): (f64, f64),
) -> Result<String> {
    let xd = dev.upload(&x_all.narrow_rows(0, tokens)?).context("uploading x")?;
    let ld = dev
        .upload(&logits_all.narrow_rows(0, tokens)?)
        .context("uploading the router logits")?;
    let before = kernel_loads().len();
    let t = Instant::now();
    let y = layer.forward(&xd, &ld)?;
    dev.synchronize()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(y);
    let loads = kernel_loads();
    let mut line = format!(
        "first forward (T={tokens}) {ms:.0} ms; kernels: {}",
        kernel_loads_summary(&loads[before.min(loads.len())..])
    );
    if let Some(age) = process_age_s() {
        line.push_str(&format!(
            "; {age:.2} s after process start, {:.2} s of it beyond the weights ({weights_s:.2} s) and the ceilings ({ceilings_s:.2} s)",
            age - weights_s - ceilings_s
        ));
    }
    Ok(line)
}

/// Seconds since this process started: Linux's `/proc/self/stat` start time (in 10 ms ticks
/// since boot) against `/proc/uptime`; `None` elsewhere.
fn process_age_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; the start time is field 22 of the line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - start_ticks / 100.0)
}

/// Warm-up forwards, then `repeats` forwards each timed by device events; seconds per
/// forward, and whether the first output was finite.
fn time_forward(
    dev: &CudaDevice,
    layer: &mut ConfigurableMoe,
    x: &Tensor,
    logits: &Tensor,
    warmup: usize,
    repeats: usize,
    tick: &dyn Fn(),
) -> Result<(Vec<f64>, bool)> {
    let mut finite = true;
    for i in 0..warmup.max(1) {
        let y = layer.forward(x, logits)?;
        if i == 0 {
            finite = all_finite(&y)?;
        }
        tick();
    }
    dev.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let timer = dev.timer()?;
        let y = layer.forward(x, logits)?;
        let ms = timer.stop_ms()?;
        drop(y);
        times.push(ms / 1e3);
        tick();
    }
    Ok((times, finite))
}

/// One forward captured into a CUDA graph (its output copied into a buffer allocated before
/// the capture, so the graph frees everything it allocates and can be relaunched), one
/// untimed replay, then `repeats` replays each timed by device events; the median in ms.
/// Runs after the eager timing, so the kernels are compiled and the constants uploaded.
fn time_graph(
    dev: &CudaDevice,
    layer: &mut ConfigurableMoe,
    x: &Tensor,
    logits: &Tensor,
    repeats: usize,
) -> Result<f64> {
    let y = layer.forward(x, logits)?;
    let mut out = dev.zeros(y.dtype(), y.shape().to_vec())?;
    drop(y);
    dev.synchronize()?;
    let (graph, ()) = dev.capture("the layer forward", || {
        let y = layer.forward(x, logits)?;
        dev.copy_into(&mut out, &y)
    })?;
    graph.launch()?;
    dev.synchronize()?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let timer = dev.timer()?;
        graph.launch()?;
        times.push(timer.stop_ms()?);
    }
    dev.synchronize()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Runs the planned rows on the device and prints them (table or JSON lines).
pub(crate) fn run(args: &BenchOptions, plans: &[Plan], ui: &dyn Ui) -> Result<()> {
    let ordinal = args.device;
    if args.prepare || args.peer.is_some() || args.markdown.is_some() {
        return Err(BenchError::Invalid(format!(
            "--prepare, --peer and --markdown belong to the CPU harness (`cargo xtask bench`); `--backend {}` generates its weights in memory and prints its rows",
            args.backend
        )));
    }
    if let Some(p) = plans.iter().find(|p| !GeneratedWeights::generates(p.preset.weights)) {
        return Err(BenchError::Invalid(format!(
            "`--backend {}` generates f32, bf16 and fp8-block weights in memory; `{}` weights ({}) are benchmarked on the host backends",
            args.backend, p.preset.weights, p.preset.name
        )));
    }
    let dev = CudaDevice::new(ordinal).with_context(|| {
        format!(
            "opening CUDA device {ordinal} for `--backend {}` (build with `--features cuda`, and on the GPU machine source gpu-env.sh first)",
            args.backend
        )
    })?;
    let copy_bytes = args.ceiling_mib.unwrap_or(DEFAULT_COPY_MIB) << 20;
    let matmul_n = args.ceiling_gemm.unwrap_or(DEFAULT_MATMUL_N) as usize;
    let ceilings_start = Instant::now();
    let ceilings = DeviceCeilings::measure(&dev, copy_bytes, matmul_n)?;
    let ceilings_s = ceilings_start.elapsed().as_secs_f64();
    let warmup = args.warmup.map_or(DEFAULT_WARMUP, |w| w as usize);
    // Both lines go to stderr under --json, so stdout stays one JSON object per line.
    let say = |line: &str| {
        if args.json {
            ui.note(line);
        } else {
            ui.print(line);
        }
    };
    say(&format!(
        "moe bench: {} {} (sm_{}, {} SMs), backend {}",
        dev.location(),
        dev.name(),
        dev.sm(),
        dev.multiprocessors(),
        args.backend
    ));
    say(&ceilings.line());
    say(&format!("note: {SHARED_EXPERT_NOTE}"));
    let max_rows = plans.iter().flat_map(|p| p.rows.iter().map(|r| r.0)).max().unwrap_or(1);
    let total: u64 = plans
        .iter()
        .flat_map(|p| p.rows.iter())
        .map(|(_, r)| (*r + warmup.max(1)) as u64)
        .sum();
    ui.forwards_start(total);
    let mut rows = Vec::new();
    for plan in plans {
        let p = &plan.preset;
        ui.forwards_status(&format!("{} loading", p.name));
        let start = Instant::now();
        let mut config = runner::config(p, &args.backend);
        config.cuda_device = Some(ordinal);
        let weights = GeneratedWeights::new(*p, args.seed);
        let mut layer = runner::build_from(config, p, &weights)?;
        drop(weights);
        ui.note(&format!(
            "{} ({}): {:.2} GB of weights generated and loaded on {} in {:.1} s",
            p.name,
            p.weights,
            p.total_bytes() as f64 / 1e9,
            dev.location(),
            start.elapsed().as_secs_f64()
        ));
        let (x_all, logits_all) = cache::inputs(p, args.seed, max_rows)?;
        let weights_s = start.elapsed().as_secs_f64();
        if let Some(&(tokens, _)) = plan.rows.first() {
            let line = first_forward(&dev, &mut layer, &x_all, &logits_all, tokens, (weights_s, ceilings_s))
                .with_context(|| format!("{} T={tokens}: first forward", p.name))?;
            ui.note(&format!("{}: {line}", p.name));
        }
        for &(tokens, repeats) in &plan.rows {
            ui.forwards_status(&format!("{} T={tokens}", p.name));
            let x = x_all.narrow_rows(0, tokens)?;
            let logits = logits_all.narrow_rows(0, tokens)?;
            let touched = runner::touched(p, &logits)?;
            let xd = dev.upload(&x).context("uploading x")?;
            let ld = dev.upload(&logits).context("uploading the router logits")?;
            let (mut times, finite) = time_forward(&dev, &mut layer, &xd, &ld, warmup, repeats, &|| ui.forward_done())
                .with_context(|| format!("{} T={tokens} on {}", p.name, args.backend))?;
            if !finite {
                ui.note(&format!(
                    "warning: {} T={tokens}: the output has non-finite values; the timing is of a broken forward",
                    p.name
                ));
            }
            let row = Row::new(p, tokens, layer.backend_name(), &mut times, touched);
            ui.forwards_status(&format!("{} T={tokens} graph", p.name));
            let graph = match time_graph(&dev, &mut layer, &xd, &ld, repeats) {
                Ok(ms) => GraphTiming::MedianMs(ms),
                Err(e) => {
                    // The failed capture was ended; clear what the device recorded so the
                    // next row starts clean.
                    let _ = dev.synchronize();
                    let text = chain(&e);
                    ui.note(&format!("warning: {} T={tokens}: graph capture: {text}", p.name));
                    GraphTiming::Failed(text)
                }
            };
            if args.json {
                ui.print(&row_json(&row, &ceilings, &graph).to_string());
            }
            rows.push((row, graph));
        }
    }
    ui.forwards_end();
    ui.note(&format!("kernels: {}", kernel_loads_summary(&kernel_loads())));
    if rows.is_empty() {
        return Err(BenchError::NoRows);
    }
    if !args.json {
        for line in table(&rows, &ceilings).lines() {
            ui.print(line);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::Preset;

    fn ceilings() -> DeviceCeilings {
        DeviceCeilings {
            card: "test card".into(),
            location: "cuda:0".into(),
            copy_bytes: 1 << 30,
            copy_gbps: 1000.0,
            matmul_n: 8192,
            matmul_tflops: 100.0,
            fp8_matmul_tflops: Ok(200.0),
        }
    }

    #[test]
    fn process_age_reads_proc_on_linux() {
        if cfg!(target_os = "linux") {
            let age = process_age_s().unwrap();
            assert!((0.0..3600.0 * 24.0).contains(&age), "{age}");
        }
    }

    #[test]
    fn floors_take_the_slower_ceiling() {
        let p = Preset::find("tiny").unwrap();
        // T = 1: 24576 FLOP (0.25 ns at 100 TFLOP/s) and 2 experts = 24576 bytes (24.6 ns at
        // 1000 GB/s): the read bounds it.
        let mut t = [0.0001];
        let r = Row::new(&p, 1, "cuda", &mut t, 2);
        let c = ceilings();
        assert!((floor_ms(&r, &c) - 24576.0 / 1e12 * 1e3).abs() < 1e-12);
        // T = 100000: 2.46 GFLOP (24.6 us) against 8 experts = 98304 bytes (98 ns): compute.
        let mut t = [0.001];
        let r = Row::new(&p, 100_000, "cuda", &mut t, 8);
        assert!((floor_ms(&r, &c) - 100_000.0 * 24576.0 / 1e14 * 1e3).abs() < 1e-9);
        let j = row_json(&r, &c, &GraphTiming::MedianMs(0.002));
        let cpu = report::row_json(&r, &c.as_ceilings(&r), None);
        for key in cpu.as_object().unwrap().keys() {
            assert!(j.get(key).is_some(), "{key}");
        }
        assert_eq!(j["card"], "test card");
        // bf16 weights: the bf16 rate holds the FLOPs, whatever the FP8 rate.
        assert_eq!(j["floor_matmul"], "bf16");
        assert_eq!(j["floor_matmul_tflops"].as_f64(), Some(100.0));
        assert_eq!(j["gemm_ceiling_gflops"].as_f64(), Some(100e3));
        assert_eq!(j["fp8_matmul_tflops"].as_f64(), Some(200.0));
        let ratio = j["ratio_to_floor"].as_f64().unwrap();
        assert!((ratio - 1.0 / (100_000.0 * 24576.0 / 1e14 * 1e3)).abs() < 1e-9);
        assert!((j["graph_ms"].as_f64().unwrap() - 0.002).abs() < 1e-12);
        assert!(j.get("graph_error").is_none());
        let failed = row_json(&r, &c, &GraphTiming::Failed("no graph".into()));
        assert_eq!(failed["graph_error"], "no graph");
        assert!(failed.get("graph_ms").is_none());
        let t = table(
            &[
                (r.clone(), GraphTiming::MedianMs(0.002)),
                (r, GraphTiming::Failed("x".into())),
            ],
            &c,
        );
        assert!(t.contains("tiny") && t.contains("graph ms") && t.contains("0.002"));
        assert!(is_device_backend("cuda") && !is_device_backend("cpu"));
    }

    #[test]
    fn fp8_rows_use_the_fp8_rate_and_count_scales() {
        let p = Preset::find("tiny").unwrap().with_weights(WeightFormat::Fp8Block);
        let c = ceilings();
        // T = 1: two experts of 3 x (2048 codes + one 4-byte block scale) = 12312 bytes (12.3 ns
        // at 1000 GB/s) against 24576 FLOP (0.12 ns at 200 TFLOP/s): the read bounds it.
        let mut t = [0.0001];
        let r = Row::new(&p, 1, "cuda", &mut t, 2);
        assert_eq!(r.weight_bytes, 2 * 3 * (2048 + 4));
        assert!((floor_ms(&r, &c) - 12312.0 / 1e12 * 1e3).abs() < 1e-12);
        // T = 100000: 2.46 GFLOP at the FP8 rate (12.3 us) against 49 KB (49 ns): compute, at
        // half the time the bf16 rate would give.
        let mut t = [0.001];
        let r = Row::new(&p, 100_000, "cuda", &mut t, 8);
        let fp8_floor = 100_000.0 * 24576.0 / 2e14 * 1e3;
        assert!((floor_ms(&r, &c) - fp8_floor).abs() < 1e-9);
        assert_eq!(
            c.floor_rate(&r),
            FloorRate {
                kind: "fp8",
                tflops: 200.0
            }
        );
        let j = row_json(&r, &c, &GraphTiming::MedianMs(0.02));
        assert_eq!(j["floor_matmul"], "fp8");
        assert_eq!(j["floor_matmul_tflops"].as_f64(), Some(200.0));
        assert_eq!(j["bf16_matmul_tflops"].as_f64(), Some(100.0));
        assert_eq!(j["gemm_ceiling_gflops"].as_f64(), Some(200e3));
        assert_eq!(j["bound"], "compute");
        assert!((j["floor_ms"].as_f64().unwrap() - fp8_floor).abs() < 1e-9);
        let table = table(&[(r.clone(), GraphTiming::MedianMs(0.02))], &c);
        let line = table.lines().nth(1).unwrap();
        assert!(
            line.contains("fp8-block") && line.split_whitespace().any(|w| w == "fp8"),
            "{line}"
        );
        assert!(
            c.line().contains("cuBLASLt e4m3") && c.line().contains("200.0 TFLOP/s"),
            "{}",
            c.line()
        );
        // Without an FP8 GEMM (below sm_89), FP8 rows fall back to the bf16 rate and say so.
        let old = DeviceCeilings {
            fp8_matmul_tflops: Err("no FP8 tensor cores".into()),
            ..ceilings()
        };
        assert_eq!(old.floor_rate(&r).kind, "bf16");
        assert!((floor_ms(&r, &old) - 2.0 * fp8_floor).abs() < 1e-9);
        let j = row_json(&r, &old, &GraphTiming::MedianMs(0.02));
        assert_eq!(j["floor_matmul"], "bf16");
        assert!(j["fp8_matmul_tflops"].is_null());
        assert_eq!(j["fp8_matmul_error"], "no FP8 tensor cores");
        assert!(
            old.line().contains("unavailable (no FP8 tensor cores)"),
            "{}",
            old.line()
        );
    }
}
