//! The benchmark harness behind `moe bench`: the MoE layer on named presets at several token
//! counts, timed against the machine's measured ceilings and, when given, a peer's timings on
//! the same weights.
//!
//! - [`preset`]: the shapes and the FLOP/byte arithmetic;
//! - [`cache`]: random weights and inputs, generated once and cached under `.moe-cache/`;
//! - [`ceilings`]: f32 GEMM throughput and f32 GEMV read bandwidth, measured in the run;
//! - [`runner`]: building the layer and timing its forward (median after warm-up);
//! - [`report`]: the text table, JSON lines and `docs/BENCHMARKS.md`;
//! - [`device`]: `--backend cuda`, the same rows on a GPU (device ceilings, device-event
//!   timing, floors), with weights from [`generated`] (the cache's values, in memory).
//!
//! A caller (the `moe bench` command) turns its flags into [`BenchOptions`], asks [`plan`] for
//! the rows, and hands them to [`run`] with a [`Ui`], which receives every line of the report
//! and the progress of the run; `run` returns the markdown page to write, if one was asked for.
//! Test data and generated weights draw from `moe_core::prng::SplitMix64`, the workspace's one
//! generator. `cargo xtask bench` drives it: `--prepare` generates the caches and prints the
//! plan the candle peer follows, then a full run with `--peer` and `--markdown` writes the page.

pub mod cache;
pub mod ceilings;
pub mod device;
mod error;
pub mod generated;
pub mod preset;
pub mod report;
pub mod runner;

use std::path::{Path, PathBuf};

pub use error::{BenchError, Result, chain};

use ceilings::Ceilings;
use error::Context;
use preset::{DEFAULT_RUN_MAX_FLOP, Preset, SWEEP_TOKENS, TOKENS, WeightFormat};
use report::{Machine, Page};
use runner::Row;

/// What to run and how (the flags of `moe bench`, documented there).
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Preset names, in order; empty: the default run.
    pub preset: Vec<String>,
    /// Token counts; empty: the default counts.
    pub tokens: Vec<u64>,
    /// Run [`SWEEP_TOKENS`] (every count) instead of `tokens`.
    pub sweep: bool,
    /// Backend to time (`cuda` or `cuda-*` takes the device harness).
    pub backend: String,
    /// CUDA device ordinal of a device run.
    pub device: usize,
    /// One JSON object per row on the report's lines instead of the table.
    pub json: bool,
    /// Timed forwards per row (default: by the expected forward time; 25 on a device).
    pub repeats: Option<u64>,
    /// Untimed forwards before the timed ones (default: 1; 5 on a device).
    pub warmup: Option<u64>,
    /// Weight format replacing each preset's own.
    pub weights: Option<String>,
    /// Where generated weights and inputs are cached.
    pub cache_dir: PathBuf,
    /// Seed of the generated weights and inputs.
    pub seed: u64,
    /// Size of the GEMV ceiling's matrix, or of the device copy (default: 512, 1024 on a device).
    pub ceiling_mib: Option<u64>,
    /// Side of the GEMM ceiling's square problem (default: 2048 on the CPU, 8192 on a device).
    pub ceiling_gemm: Option<u64>,
    /// JSON lines of a peer's timings to put next to ours.
    pub peer: Option<PathBuf>,
    /// Also produce the report as markdown, kept sections of the page at this path included.
    pub markdown: Option<PathBuf>,
    /// Generate the caches and print the plan without timing anything.
    pub prepare: bool,
}

/// Where a run's lines and progress go: the `moe` command prints the lines and draws
/// progress bars on a terminal. `print` and `note` may come while progress is shown.
pub trait Ui: Sync {
    /// One line of the report (the table, JSON rows, the plan): stdout.
    fn print(&self, line: &str);
    /// One line about the run (notes, warnings, setup times): stderr.
    fn note(&self, line: &str);
    /// The weights of `preset` (`experts` of them) are being generated or opened.
    fn weights_start(&self, preset: &str, experts: usize);
    /// `done` experts generated (called from the generation's worker threads).
    fn weights_progress(&self, done: usize);
    /// The weights are ready.
    fn weights_end(&self);
    /// `total` forwards (warm-up and timed) are about to run.
    fn forwards_start(&self, total: u64);
    /// What runs now ("qwen3-30b-a3b T=8").
    fn forwards_status(&self, status: &str);
    /// One forward done.
    fn forward_done(&self);
    /// Every forward done.
    fn forwards_end(&self);
}

/// A preset with the rows to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub preset: Preset,
    /// (tokens, timed repeats).
    pub rows: Vec<(usize, usize)>,
}

/// The plan of a run: the presets with their rows, and notes on the default rows left out.
#[derive(Clone, Debug)]
pub struct Planned {
    pub plans: Vec<Plan>,
    pub not_run: Vec<String>,
}

/// CPU defaults of the flags whose default depends on the backend.
const CPU_WARMUP: u64 = 1;
const CPU_CEILING_MIB: u64 = 512;
const CPU_CEILING_GEMM: u64 = 2048;

/// The presets and rows the options select, and notes on the default rows left out. A device
/// backend runs every token count and, unless `preset` or `weights` narrows it, each preset in
/// each of its `device_formats` (DeepSeek-V3 in bf16 next to its FP8 rows: 22.5 GB of bf16
/// weights fit a GPU, not this host's RAM; Qwen3-30B-A3B in FP8 next to bf16). `sweep` runs
/// [`SWEEP_TOKENS`] for every selected preset, every count regardless of time.
pub fn plan(args: &BenchOptions) -> Result<Planned> {
    let on_device = device::is_device_backend(&args.backend);
    let override_weights =
        match &args.weights {
            Some(w) => Some(WeightFormat::parse(w).ok_or_else(|| {
                BenchError::Invalid(format!("unknown weight format `{w}` ({})", WeightFormat::names()))
            })?),
            None => None,
        };
    let presets: Vec<Preset> = if !args.preset.is_empty() {
        args.preset
            .iter()
            .map(|name| {
                Preset::find(name).ok_or_else(|| {
                    BenchError::Invalid(format!(
                        "unknown preset `{name}` (known: {})",
                        Preset::names().join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
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
    Ok(Planned { plans, not_run })
}

/// Opens (generating if needed) the cache of `plan`'s preset, reporting progress to `ui`.
fn cache_of(args: &BenchOptions, plan: &Plan, ui: &dyn Ui) -> Result<cache::Cache> {
    let p = &plan.preset;
    let rows = plan
        .rows
        .iter()
        .map(|r| r.0)
        .max()
        .unwrap_or(1)
        .max(TOKENS[TOKENS.len() - 1]);
    ui.weights_start(p.name, p.experts);
    let c = cache::ensure(&args.cache_dir, p, args.seed, rows, &|done, _| {
        ui.weights_progress(done)
    })?;
    ui.weights_end();
    Ok(c)
}

/// Reads a peer's JSON lines into rows, with our arithmetic (the same routing reads the same
/// experts, so the touched count comes from our row of the same preset, weights, when the
/// line names them, and token count).
pub fn read_peer(path: &Path, ours: &[Row]) -> Result<Vec<Row>> {
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

/// Runs `planned` (from [`plan`] of the same `args`): on a device backend the device harness,
/// else the CPU one (or, with `prepare`, only the caches and the plan's lines). Every line of
/// the report goes to `ui`; returns the markdown page when `args.markdown` asked for one (the
/// caller writes it there: the sections after [`report::KEPT_MARKER`] of the page already at
/// that path are kept).
pub fn run(args: &BenchOptions, planned: &Planned, ui: &dyn Ui) -> Result<Option<String>> {
    let Planned { plans, not_run } = planned;
    if device::is_device_backend(&args.backend) {
        device::run(args, plans, ui)?;
        return Ok(None);
    }
    let warmup = args.warmup.unwrap_or(CPU_WARMUP);
    if args.prepare {
        for plan in plans {
            let c = cache_of(args, plan, ui)?;
            let p = &plan.preset;
            ui.note(&format!(
                "{}: {} experts, {:.2} GB of {} weights in {} shards",
                p.name,
                p.experts,
                p.total_bytes() as f64 / 1e9,
                p.weights,
                c.meta.shards.len()
            ));
            let rows: Vec<String> = plan.rows.iter().map(|(t, r)| format!("{t}:{r}")).collect();
            ui.print(&format!("{} {} {}", plan.preset.name, c.dir.display(), rows.join(",")));
        }
        for n in not_run {
            ui.note(&format!("note: not in the default run: {n}"));
        }
        return Ok(None);
    }
    let machine = Machine::probe();
    if machine.busy_rustc > 0 {
        ui.note(&format!(
            "warning: {} rustc processes are running; timings will be noisy",
            machine.busy_rustc
        ));
    }
    let ceilings: Ceilings = ceilings::measure(
        args.ceiling_gemm.unwrap_or(CPU_CEILING_GEMM) as usize,
        args.ceiling_mib.unwrap_or(CPU_CEILING_MIB) << 20,
    );
    if !args.json {
        ui.print(&format!("moe bench: {}", machine.line()));
        ui.print(&report::ceilings_line(&ceilings));
    }
    let total: u64 = plans
        .iter()
        .flat_map(|p| p.rows.iter())
        .map(|(_, r)| (*r as u64) + warmup)
        .sum();
    let mut rows = Vec::new();
    ui.forwards_start(total);
    for plan in plans {
        let p = &plan.preset;
        let cache = cache_of(args, plan, ui)?;
        ui.forwards_status(&format!("{} loading", p.name));
        let mut layer = runner::build(p, &args.backend, &cache)?;
        for &(tokens, repeats) in &plan.rows {
            ui.forwards_status(&format!("{} T={tokens}", p.name));
            let (x, logits) = cache.inputs(tokens)?;
            let touched = runner::touched(p, &logits)?;
            let mut times =
                runner::time_forward(&mut layer, &x, &logits, warmup as usize, repeats, &|| ui.forward_done())
                    .with_context(|| format!("{} T={tokens} on {}", p.name, args.backend))?;
            let row = Row::new(p, tokens, layer.backend_name(), &mut times, touched);
            // Rows stream out as they finish; the peer's are matched at the end.
            if args.json && args.peer.is_none() {
                ui.print(&report::row_json(&row, &ceilings, None).to_string());
            }
            rows.push(row);
        }
    }
    ui.forwards_end();
    let peers = match &args.peer {
        Some(path) => read_peer(path, &rows)?,
        None => Vec::new(),
    };
    if args.json {
        if args.peer.is_some() {
            for r in &rows {
                ui.print(&report::row_json(r, &ceilings, report::peer_of(r, &peers)).to_string());
            }
            for r in &peers {
                ui.print(&report::row_json(r, &ceilings, None).to_string());
            }
        }
    } else {
        for line in report::table(&rows, &peers, &ceilings).lines() {
            ui.print(line);
        }
        for t in report::targets(&rows, &peers, &ceilings) {
            ui.print(&t);
        }
        for n in not_run {
            ui.print(&format!("not in the default run: {n}"));
        }
    }
    if rows.is_empty() {
        return Err(BenchError::NoRows);
    }
    let Some(path) = &args.markdown else {
        return Ok(None);
    };
    let machine = Machine {
        busy_rustc: machine.busy_rustc.max(report::busy_rustc()),
        ..machine
    };
    let page = report::markdown(&Page {
        machine: &machine,
        ceilings: &ceilings,
        rows: &rows,
        peers: &peers,
        not_run,
        command: "cargo xtask bench",
    });
    // The GPU sections (measured on another machine, from the GPU bundle) follow a marker and
    // are kept as they are when the CPU part is regenerated.
    let kept = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(report::KEPT_MARKER).map(|at| old[at..].to_string()))
        .unwrap_or_default();
    Ok(Some(if kept.is_empty() {
        page
    } else {
        format!("{page}\n{kept}")
    }))
}
