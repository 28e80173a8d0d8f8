//! `moe bench`: the MoE layer on named presets at several token counts, timed against the
//! machine's measured ceilings and, when given, a peer's timings on the same weights.
//!
//! - [`preset`]: the shapes and the FLOP/byte arithmetic;
//! - [`cache`]: random weights and inputs, generated once and cached under `.moe-cache/`;
//! - [`ceilings`]: f32 GEMM throughput and f32 GEMV read bandwidth, measured in the run;
//! - [`runner`]: building the layer and timing its forward (median after warm-up);
//! - [`report`]: the text table, JSON lines and `docs/BENCHMARKS.md`;
//! - [`device`]: `--backend cuda`, the same rows on a GPU (device ceilings, device-event
//!   timing, floors), with weights from [`generated`] (the cache's values, in memory).
//!
//! `cargo xtask bench` drives it: `--prepare` generates the caches and prints the plan the
//! candle peer follows, then a full run with `--peer` and `--markdown` writes the page.

pub mod cache;
pub mod ceilings;
pub mod device;
pub mod generated;
pub mod preset;
pub mod report;
pub mod runner;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use ceilings::Ceilings;
use preset::{DEFAULT_RUN_MAX_FLOP, Preset, SWEEP_TOKENS, TOKENS, WeightFormat};
use report::{Machine, Page};
use runner::Row;

/// Flags of `moe bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Presets to run, comma-separated, in order: qwen3-30b-a3b, qwen3-30b-a3b-fp8 (the same
    /// shape in FP8 128x128 blocks, as Qwen3-30B-A3B-FP8 ships), mixtral-8x7b, deepseek-v3
    /// (FP8 blocks, as released), tiny (default: qwen3-30b-a3b, mixtral-8x7b, deepseek-v3;
    /// on cuda also Qwen3 in FP8 and DeepSeek-V3 in bf16).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    preset: Vec<String>,

    /// Token counts to run, comma-separated (default: 1,8,64,512,4096 less the rows that
    /// would take minutes here, which are listed; naming a count runs it regardless).
    #[arg(long, value_name = "N", value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    tokens: Vec<u64>,

    /// Run the token sweep 1,2,4,8,16,32,128,256,1024,2048,8192 (every count, as with
    /// --tokens).
    #[arg(long, conflicts_with = "tokens")]
    sweep: bool,

    /// Backend to time (cpu, reference, cuda, ...). `cuda` runs the GPU harness: weights
    /// generated in memory, device ceilings (copy, bf16 and e4m3 matmul), device-event
    /// timing, every token count, and by default Qwen3-30B-A3B and DeepSeek-V3 each in bf16
    /// and in FP8 blocks.
    #[arg(long, value_name = "NAME", default_value = "cpu")]
    backend: String,

    /// CUDA device ordinal of a `cuda` run.
    #[arg(long, value_name = "N", default_value_t = 0)]
    device: usize,

    /// Print one JSON object per row instead of the table.
    #[arg(long)]
    json: bool,

    /// Timed forwards per row (default: 15, 7 or 3 by the expected forward time; 25 on cuda).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    repeats: Option<u64>,

    /// Untimed forwards before the timed ones (default: 1; 5 on cuda).
    #[arg(long, value_name = "N")]
    warmup: Option<u64>,

    /// Store the preset's weights as f32, bf16, fp8-block, int4 (AWQ groups of 128), int8
    /// (per channel), nvfp4 or mxfp4 instead of its own format (the quantized ones with bf16
    /// activations; GB/s counts their packed bytes with scales). `--backend cuda` generates
    /// f32, bf16 and fp8-block.
    #[arg(long, value_name = "FORMAT")]
    weights: Option<String>,

    /// Where generated weights and inputs are cached.
    #[arg(long, value_name = "DIR", default_value = ".moe-cache/bench")]
    cache_dir: PathBuf,

    /// Seed of the generated weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Size of the bandwidth ceiling's GEMV matrix, or of the device copy on cuda (keep it
    /// far above the last-level cache; default: 512, 1024 on cuda).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    ceiling_mib: Option<u64>,

    /// Side of the GEMM ceiling's square problem (default: 2048 f32 on the CPU, 8192 bf16 and
    /// e4m3 on cuda; the e4m3 one needs a multiple of 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    ceiling_gemm: Option<u64>,

    /// JSON lines of a peer's timings (preset, tokens, backend, median_ms) to put next to ours.
    #[arg(long, value_name = "FILE")]
    peer: Option<PathBuf>,

    /// Also write the report as markdown (docs/BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// Generate the caches of the selected rows and print the plan (one line per preset:
    /// name, cache directory, tokens:repeats,...) without timing anything.
    #[arg(long)]
    prepare: bool,
}

/// A preset with the rows to run.
struct Plan {
    preset: Preset,
    /// (tokens, timed repeats).
    rows: Vec<(usize, usize)>,
}

/// CPU defaults of the flags whose default depends on the backend.
const CPU_WARMUP: u64 = 1;
const CPU_CEILING_MIB: u64 = 512;
const CPU_CEILING_GEMM: u64 = 2048;

/// The presets and rows the flags select, and notes on the default rows left out. A device
/// backend runs every token count and, unless `--preset` or `--weights` narrows it, each
/// preset in each of its `device_formats` (DeepSeek-V3 in bf16 next to its FP8 rows: 22.5 GB
/// of bf16 weights fit a GPU, not this host's RAM; Qwen3-30B-A3B in FP8 next to bf16).
/// `--sweep` runs [`SWEEP_TOKENS`] for every selected preset, every count regardless of time.
fn plan(args: &BenchArgs) -> anyhow::Result<(Vec<Plan>, Vec<String>)> {
    let on_device = device::is_device_backend(&args.backend);
    let override_weights = match &args.weights {
        Some(w) => Some(
            WeightFormat::parse(w)
                .with_context(|| format!("unknown weight format `{w}` ({})", WeightFormat::names()))?,
        ),
        None => None,
    };
    let presets: Vec<Preset> = if !args.preset.is_empty() {
        args.preset
            .iter()
            .map(|name| {
                Preset::find(name)
                    .with_context(|| format!("unknown preset `{name}` (known: {})", Preset::names().join(", ")))
            })
            .collect::<anyhow::Result<_>>()?
    } else if on_device && override_weights.is_none() {
        preset::PRESETS
            .iter()
            .copied()
            .filter(|p| p.in_default_run)
            .flat_map(|p| p.device_formats.iter().map(move |&w| p.with_weights(w)))
            .collect()
    } else {
        preset::PRESETS.iter().copied().filter(|p| p.in_default_run).collect()
    };
    let requested: Vec<usize> = if args.sweep {
        SWEEP_TOKENS.to_vec()
    } else {
        args.tokens.iter().map(|&t| t as usize).collect()
    };
    let mut plans = Vec::new();
    let mut not_run = Vec::new();
    for p in presets {
        let p = override_weights.map_or(p, |w| p.with_weights(w));
        let tokens: Vec<usize> = if !requested.is_empty() {
            requested.clone()
        } else if on_device {
            TOKENS.to_vec()
        } else {
            TOKENS.iter().copied().filter(|&t| {
                let keep = p.flops(t) <= DEFAULT_RUN_MAX_FLOP;
                if !keep {
                    not_run.push(format!(
                        "{} T={t}: {:.2} TFLOP per forward, about {:.0} s each at 100 GFLOP/s (x 4 with warm-up, more for the peer)",
                        p.name,
                        p.flops(t) / 1e12,
                        runner::estimate_s(&p, t)
                    ));
                }
                keep
            })
            .collect()
        };
        let rows = tokens
            .into_iter()
            .map(|t| {
                (
                    t,
                    args.repeats.map_or_else(
                        || {
                            if on_device {
                                device::DEFAULT_REPEATS
                            } else {
                                runner::default_repeats(runner::estimate_s(&p, t))
                            }
                        },
                        |r| r as usize,
                    ),
                )
            })
            .collect();
        plans.push(Plan { preset: p, rows });
    }
    Ok((plans, not_run))
}

fn bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    b
}

/// Opens (generating if needed) the cache of `plan`'s preset, with a progress bar.
fn cache_of(args: &BenchArgs, plan: &Plan) -> anyhow::Result<cache::Cache> {
    let p = &plan.preset;
    let rows = plan
        .rows
        .iter()
        .map(|r| r.0)
        .max()
        .unwrap_or(1)
        .max(TOKENS[TOKENS.len() - 1]);
    let bar_gen = bar(
        p.experts as u64,
        "{spinner} generating {msg} weights {bar:30} {pos}/{len} experts {elapsed}",
    );
    bar_gen.set_message(p.name);
    let c = cache::ensure(&args.cache_dir, p, args.seed, rows, &|done, _| {
        bar_gen.set_position(done as u64)
    })?;
    bar_gen.finish_and_clear();
    Ok(c)
}

/// Reads a peer's JSON lines into rows, with our arithmetic (the same routing reads the same
/// experts, so the touched count comes from our row of the same preset, weights, when the
/// line names them, and token count).
fn read_peer(path: &Path, ours: &[Row]) -> anyhow::Result<Vec<Row>> {
    #[derive(serde::Deserialize)]
    struct Line {
        preset: String,
        tokens: usize,
        backend: String,
        median_ms: f64,
        #[serde(default)]
        weights: Option<String>,
        #[serde(default)]
        min_ms: Option<f64>,
        #[serde(default)]
        repeats: Option<usize>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading peer timings `{}`", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let l: Line = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a peer timing line", path.display(), i + 1))?;
        let same_weights = |r: &Row| l.weights.as_ref().is_none_or(|w| *w == r.weights);
        let Some(ours) = ours
            .iter()
            .find(|r| r.preset == l.preset && r.tokens == l.tokens && same_weights(r))
        else {
            continue;
        };
        let Some(p) = Preset::find(&l.preset) else { continue };
        let p = WeightFormat::parse(&ours.weights).map_or(p, |w| p.with_weights(w));
        let mut t = [l.median_ms / 1e3];
        let mut row = Row::new(&p, l.tokens, &l.backend, &mut t, ours.experts_touched);
        row.min_ms = l.min_ms.unwrap_or(l.median_ms);
        row.repeats = l.repeats.unwrap_or(1);
        rows.push(row);
    }
    Ok(rows)
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (plans, not_run) = plan(&args)?;
    // The page's location is checked before minutes of timing, not after.
    if let Some(path) = &args.markdown {
        crate::output::check_output(path, "--markdown", &[])?;
    }
    if device::is_device_backend(&args.backend) {
        return device::run(&args, &plans, args.device);
    }
    let warmup = args.warmup.unwrap_or(CPU_WARMUP);
    if args.prepare {
        for plan in &plans {
            let c = cache_of(&args, plan)?;
            let p = &plan.preset;
            eprintln!(
                "{}: {} experts, {:.2} GB of {} weights in {} shards",
                p.name,
                p.experts,
                p.total_bytes() as f64 / 1e9,
                p.weights,
                c.meta.shards.len()
            );
            let rows: Vec<String> = plan.rows.iter().map(|(t, r)| format!("{t}:{r}")).collect();
            println!("{} {} {}", plan.preset.name, c.dir.display(), rows.join(","));
        }
        for n in &not_run {
            eprintln!("note: not in the default run: {n}");
        }
        return Ok(());
    }
    let machine = Machine::probe();
    if machine.busy_rustc > 0 {
        eprintln!(
            "warning: {} rustc processes are running; timings will be noisy",
            machine.busy_rustc
        );
    }
    let ceilings: Ceilings = ceilings::measure(
        args.ceiling_gemm.unwrap_or(CPU_CEILING_GEMM) as usize,
        args.ceiling_mib.unwrap_or(CPU_CEILING_MIB) << 20,
    );
    if !args.json {
        println!("moe bench: {}", machine.line());
        println!("{}", report::ceilings_line(&ceilings));
    }
    let total: u64 = plans
        .iter()
        .flat_map(|p| p.rows.iter())
        .map(|(_, r)| (*r as u64) + warmup)
        .sum();
    let mut rows = Vec::new();
    let progress = bar(total, "{spinner} {msg} {bar:30} {pos}/{len} forwards {elapsed}");
    for plan in &plans {
        let p = &plan.preset;
        let cache = cache_of(&args, plan)?;
        progress.set_message(format!("{} loading", p.name));
        let mut layer = runner::build(p, &args.backend, &cache)?;
        for &(tokens, repeats) in &plan.rows {
            progress.set_message(format!("{} T={tokens}", p.name));
            let (x, logits) = cache.inputs(tokens)?;
            let touched = runner::touched(p, &logits)?;
            let mut times =
                runner::time_forward(&mut layer, &x, &logits, warmup as usize, repeats, &|| progress.inc(1))
                    .with_context(|| format!("{} T={tokens} on {}", p.name, args.backend))?;
            let row = Row::new(p, tokens, layer.backend_name(), &mut times, touched);
            if args.json {
                // Rows stream out as they finish; the peer's are matched at the end.
                if args.peer.is_none() {
                    progress.suspend(|| println!("{}", report::row_json(&row, &ceilings, None)));
                }
            }
            rows.push(row);
        }
    }
    progress.finish_and_clear();
    let peers = match &args.peer {
        Some(path) => read_peer(path, &rows)?,
        None => Vec::new(),
    };
    if args.json {
        if args.peer.is_some() {
            for r in &rows {
                println!("{}", report::row_json(r, &ceilings, report::peer_of(r, &peers)));
            }
            for r in &peers {
                println!("{}", report::row_json(r, &ceilings, None));
            }
        }
    } else {
        print!("{}", report::table(&rows, &peers, &ceilings));
        for t in report::targets(&rows, &peers, &ceilings) {
            println!("{t}");
        }
        for n in &not_run {
            println!("not in the default run: {n}");
        }
    }
    if rows.is_empty() {
        bail!("no rows were selected");
    }
    if let Some(path) = &args.markdown {
        let machine = Machine {
            busy_rustc: machine.busy_rustc.max(report::busy_rustc()),
            ..machine
        };
        let page = report::markdown(&Page {
            machine: &machine,
            ceilings: &ceilings,
            rows: &rows,
            peers: &peers,
            not_run: &not_run,
            command: "cargo xtask bench",
        });
        // The GPU sections (measured on another machine, from the GPU bundle) follow a marker
        // and are kept as they are when the CPU part is regenerated.
        let kept = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find(report::KEPT_MARKER).map(|at| old[at..].to_string()))
            .unwrap_or_default();
        let page = if kept.is_empty() {
            page
        } else {
            format!("{page}\n{kept}")
        };
        crate::output::write_atomic(path, "bench page", page.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// (preset, weights, tokens) of each planned preset for `moe bench ARGV`.
    fn planned(argv: &[&str]) -> Vec<(&'static str, &'static str, Vec<usize>)> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).unwrap();
        plan(&cli.args)
            .unwrap()
            .0
            .into_iter()
            .map(|p| {
                (
                    p.preset.name,
                    p.preset.weights.name(),
                    p.rows.iter().map(|r| r.0).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn device_default_runs_qwen3_and_deepseek_in_bf16_and_fp8() {
        let runs: Vec<_> = planned(&["--backend", "cuda"])
            .into_iter()
            .map(|(p, w, t)| {
                assert_eq!(t, TOKENS.to_vec(), "{p} {w}");
                (p, w)
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("qwen3-30b-a3b", "bf16"),
                ("qwen3-30b-a3b", "fp8-block"),
                ("mixtral-8x7b", "bf16"),
                ("deepseek-v3", "bf16"),
                ("deepseek-v3", "fp8-block"),
            ]
        );
        // The CPU default run is unchanged: each preset once, in its own format.
        let cpu: Vec<_> = planned(&[]).into_iter().map(|(p, w, _)| (p, w)).collect();
        assert_eq!(
            cpu,
            [
                ("qwen3-30b-a3b", "bf16"),
                ("mixtral-8x7b", "bf16"),
                ("deepseek-v3", "fp8-block")
            ]
        );
    }

    #[test]
    fn sweep_runs_every_count_for_every_listed_preset() {
        let sweep = SWEEP_TOKENS.to_vec();
        let runs = planned(&[
            "--backend",
            "cuda",
            "--preset",
            "qwen3-30b-a3b,qwen3-30b-a3b-fp8,deepseek-v3",
            "--sweep",
        ]);
        assert_eq!(
            runs,
            [
                ("qwen3-30b-a3b", "bf16", sweep.clone()),
                ("qwen3-30b-a3b", "fp8-block", sweep.clone()),
                ("deepseek-v3", "fp8-block", sweep.clone()),
            ]
        );
        // On the CPU too, every count runs (none is left out for time, as with --tokens).
        assert_eq!(
            planned(&["--preset", "deepseek-v3", "--sweep"]),
            [("deepseek-v3", "fp8-block", sweep)]
        );
        assert_eq!(
            planned(&["--preset", "qwen3-30b-a3b-fp8", "--tokens", "3,5"]),
            [("qwen3-30b-a3b", "fp8-block", vec![3, 5])]
        );
        assert!(Cli::try_parse_from(["bench", "--sweep", "--tokens", "1"]).is_err());
    }
}
