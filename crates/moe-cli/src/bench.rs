//! `moe bench`: the flags, progress bars and printing around the harness of the `moe-bench`
//! crate (presets, weight cache, ceilings, timing, report; `--backend cuda` on a GPU).
//!
//! `cargo xtask bench` drives it: `--prepare` generates the caches and prints the plan the
//! candle peer follows, then a full run with `--peer` and `--markdown` writes the page.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moe_bench::{BenchOptions, Ui};

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

impl BenchArgs {
    fn options(self) -> BenchOptions {
        BenchOptions {
            preset: self.preset,
            tokens: self.tokens,
            sweep: self.sweep,
            backend: self.backend,
            device: self.device,
            json: self.json,
            repeats: self.repeats,
            warmup: self.warmup,
            weights: self.weights,
            cache_dir: self.cache_dir,
            seed: self.seed,
            ceiling_mib: self.ceiling_mib,
            ceiling_gemm: self.ceiling_gemm,
            peer: self.peer,
            markdown: self.markdown,
            prepare: self.prepare,
        }
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    b
}

/// The harness's lines on stdout and stderr, its progress as bars on a terminal; a line
/// printed while the forwards' bar is shown suspends it.
#[derive(Default)]
struct Bars {
    weights: Mutex<Option<ProgressBar>>,
    forwards: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn forwards(&self) -> Option<ProgressBar> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn weights(&self) -> Option<ProgressBar> {
        self.weights.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Ui for Bars {
    fn print(&self, line: &str) {
        match self.forwards() {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn note(&self, line: &str) {
        match self.forwards() {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn weights_start(&self, preset: &str, experts: usize) {
        let b = bar(
            experts as u64,
            "{spinner} generating {msg} weights {bar:30} {pos}/{len} experts {elapsed}",
        );
        b.set_message(preset.to_string());
        *self.weights.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
    }

    fn weights_progress(&self, done: usize) {
        if let Some(b) = self.weights() {
            b.set_position(done as u64);
        }
    }

    fn weights_end(&self) {
        if let Some(b) = self.weights.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }

    fn forwards_start(&self, total: u64) {
        let b = bar(total, "{spinner} {msg} {bar:30} {pos}/{len} forwards {elapsed}");
        *self.forwards.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
    }

    fn forwards_status(&self, status: &str) {
        if let Some(b) = self.forwards() {
            b.set_message(status.to_string());
        }
    }

    fn forward_done(&self) {
        if let Some(b) = self.forwards() {
            b.inc(1);
        }
    }

    fn forwards_end(&self) {
        if let Some(b) = self.forwards.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let args = args.options();
    let planned = moe_bench::plan(&args)?;
    // The page's location is checked before minutes of timing, not after.
    if let Some(path) = &args.markdown {
        crate::output::check_output(path, "--markdown", &[])?;
    }
    let page = moe_bench::run(&args, &planned, &Bars::default())?;
    if let (Some(path), Some(page)) = (&args.markdown, page) {
        crate::output::write_atomic(path, "bench page", page.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use moe_bench::preset::{SWEEP_TOKENS, TOKENS};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// (preset, weights, tokens) of each planned preset for `moe bench ARGV`.
    fn planned(argv: &[&str]) -> Vec<(&'static str, &'static str, Vec<usize>)> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).unwrap();
        moe_bench::plan(&cli.args.options())
            .unwrap()
            .plans
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
