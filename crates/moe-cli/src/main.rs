//! The `moe` command-line tool.
//!
//! `moe run` with no arguments runs an embedded synthetic DeepSeek-V3-style layer and prints
//! the backend resolution report, routing balance, wall time and GFLOP/s. With `--model DIR`
//! it runs the MoE block of a Hugging Face checkpoint (float or quantized) on rows of a
//! safetensors tensor and writes the output. `moe quantize` writes a float checkpoint's experts
//! as FP8 block, NVFP4 or MXFP4. Errors print `error: <message chain>` and exit non-zero.

mod bench;
mod eplb_cmd;
mod input_files;
mod model_run;
mod output;
mod progress;
mod quantize;
mod ranks;
mod stats;
mod synthetic;
mod tensor_io;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use moe_core::limits::{MAX_LAYERS, MAX_SLOTS, MAX_TOKENS, MAX_WORLD};
use moe_hf::TargetFormat;

// Flag bounds as clap ranges (inclusive, u64): a value past one is refused naming the flag
// before anything runs (docs/LIMITS.md).
const SLOTS: u64 = MAX_SLOTS as u64;
const TOKENS: u64 = MAX_TOKENS as u64;
const WORLD: u64 = MAX_WORLD as u64;
const LAYERS: u64 = MAX_LAYERS as u64;

/// Run Mixture-of-Experts layers: a synthetic benchmark layer or the MoE block of a
/// Hugging Face checkpoint (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, gpt_oss, llama4).
#[derive(Debug, Parser)]
#[command(name = "moe", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one MoE layer and report backend, routing balance and throughput.
    ///
    /// Without --model: a deterministic synthetic DeepSeek-V3-style layer (E=64, top-6 of 8
    /// groups, H=1024, I=256, bf16, 2048 tokens in chunks of 512), generated in memory.
    ///
    /// With --model DIR: the MoE block (router, routed experts, shared experts) of layer
    /// --layer of the checkpoint in DIR, on the rows of tensor --input-key of --input;
    /// the result is written as tensor `y` to --output. Quantized checkpoints (DeepSeek FP8
    /// block, GPT-OSS MXFP4, ModelOpt NVFP4/FP8, AWQ INT4) load in their format.
    Run(RunArgs),

    /// Quantize the routed experts of a bf16/f16/f32 checkpoint and write a new checkpoint.
    ///
    /// Experts are written in the format's real layout: fp8-block as DeepSeek-V3
    /// (`weight` e4m3 + `weight_scale_inv` per 128x128 block), nvfp4 as ModelOpt (`weight`,
    /// `weight_scale`, `weight_scale_2`, `input_scale`), mxfp4 as GPT-OSS `_blocks`/`_scales`
    /// (per expert `weight` + `weight_scale` for per-expert families). Every other tensor is
    /// copied unchanged; config.json gets the quantization_config. See docs/QUANTIZATION.md.
    Quantize(QuantizeArgs),

    /// Expert-parallel load balancing: plan expert placements from recorded expert loads.
    #[command(subcommand)]
    Eplb(EplbCommand),

    /// Benchmark the layer on named presets (qwen3-30b-a3b, qwen3-30b-a3b-fp8, mixtral-8x7b,
    /// deepseek-v3) at 1..4096 tokens (--sweep: 1..8192) against the machine's measured GEMM
    /// and memory-bandwidth ceilings (on cuda also an e4m3 GEMM for FP8 weights).
    ///
    /// Random weights are generated once and cached under --cache-dir. Prints a table (or
    /// one JSON object per row with --json): median time after warm-up, GFLOP/s, weight
    /// bytes/s of the experts read, and the ratio to the ceiling that bounds the row.
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum EplbCommand {
    /// Plan a placement: which expert every physical slot serves, with replicas of hot experts.
    ///
    /// Input `{"load": [[...per expert...] per layer]}` (e.g. from `moe run --record-stats`);
    /// output `{"phy2log": [[...] per layer], "logcnt": [[...]], "balancedness": [...]}` (or
    /// TensorRT-LLM's placement YAML with --yaml). Prints balancedness (mean/max GPU load)
    /// before and after per layer.
    Plan(EplbPlanArgs),

    /// Summarize a load file: expert imbalance per layer and, with --num-slots/--num-gpus,
    /// the rank balancedness of the default placement.
    Stats(EplbStatsArgs),
}

/// Placement algorithms of `moe eplb plan`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum AlgorithmArg {
    /// DeepSeek's hierarchical rebalance_experts (node -> GPU packing), reproduced exactly.
    Deepseek,
    /// TensorRT-LLM's greedy replication + least-loaded placement.
    Greedy,
    /// This project's planner: at least DeepSeek's balancedness; with --previous it limits
    /// how many slots change.
    Default,
}

#[derive(Debug, Args)]
struct EplbPlanArgs {
    /// JSON file `{"load": [[...]]}` of expert loads per layer.
    #[arg(long, value_name = "FILE")]
    load: PathBuf,
    /// Physical expert slots over all GPUs (>= experts; extra slots hold replicas; at most 65536).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_slots: u64,
    /// GPUs (EP ranks) the slots are spread over.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_gpus: u64,
    /// Nodes the GPUs are in (DeepSeek's hierarchical policy packs groups per node).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_nodes: u64,
    /// Expert groups (DeepSeek-V3 routing groups).
    #[arg(long, value_name = "G", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_groups: u64,
    #[arg(long, value_enum, default_value = "default")]
    algorithm: AlgorithmArg,
    /// Most slots the default algorithm may change relative to --previous, per layer.
    #[arg(long, value_name = "N", requires = "previous")]
    max_changed_slots: Option<usize>,
    /// The placement being replaced (a JSON plan); the default algorithm keeps what it can.
    #[arg(long, value_name = "PLACEMENT.json")]
    previous: Option<PathBuf>,
    /// Where to write the placement.
    #[arg(long, value_name = "PLACEMENT.json")]
    output: PathBuf,
    /// Write TensorRT-LLM's placement YAML instead of JSON.
    #[arg(long)]
    yaml: bool,
    /// Model layer index of the first row of the load file (the YAML names layers by it, as
    /// `moe run --placement` looks them up).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..LAYERS))]
    first_layer: u64,
    /// Print one machine-readable JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EplbStatsArgs {
    /// Load file written by `moe run --record-stats`.
    file: PathBuf,
    #[arg(long, value_name = "R", requires = "num_gpus", value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_slots: Option<u64>,
    #[arg(long, value_name = "P", requires = "num_slots", value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    num_gpus: Option<u64>,
    /// Print one machine-readable JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The choices of `moe quantize --format`: the formats whose descriptor has a `moe quantize`
/// spelling (`moe_hf::TargetFormat`, names and help read from `moe_core::quant_format`).
fn target_format_parser() -> impl clap::builder::TypedValueParser<Value = TargetFormat> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(TargetFormat::ALL.map(|f| PossibleValue::new(f.name()).help(f.summary())))
        .try_map(|s| TargetFormat::parse(&s))
}

#[derive(Debug, Args)]
struct QuantizeArgs {
    /// Float Hugging Face checkpoint directory to read.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// Quantized format to write.
    #[arg(long, value_parser = target_format_parser())]
    format: TargetFormat,

    /// Directory to write the quantized checkpoint to: created, or replaced whole when it holds
    /// a previous `moe quantize` output (any other non-empty directory is refused). Written
    /// beside it and renamed into place, so a failed run leaves the previous one intact.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,

    /// Safetensors file of calibration activations [T, H] (the MoE block's input) for the
    /// NVFP4 input_scale of every expert; without it input_scale = 1.0 (activations up to
    /// 448*6 = 2688 unclipped).
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,

    /// Name of the tensor inside --calibration.
    #[arg(long, value_name = "KEY", default_value = "x", requires = "calibration")]
    calibration_key: String,

    /// Largest safetensors shard in MiB (several shards get a model.safetensors.index.json).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    max_shard_mib: Option<u64>,

    /// Print one machine-readable JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Hugging Face checkpoint directory (config.json + model.safetensors or a sharded index).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,

    /// Layer index of the MoE block to run (default: the model's first MoE layer).
    #[arg(long, value_name = "N", requires = "model")]
    layer: Option<usize>,

    /// Safetensors file holding the input activations [T, H].
    #[arg(long, value_name = "FILE", requires = "model")]
    input: Option<PathBuf>,

    /// Name of the input tensor inside --input.
    #[arg(long, value_name = "KEY", default_value = "x", requires = "input")]
    input_key: String,

    /// Write the output as tensor `y` ([T, H], in the model's dtype) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Largest number of tokens the routed layer processes per chunk (default: 512 for the
    /// synthetic layer, unchunked for checkpoints).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=TOKENS))]
    max_tokens_per_chunk: Option<u64>,

    // The help lists the registry's names (`backend_help`), so it never goes stale.
    #[arg(long, value_name = "NAME", help = backend_help())]
    backend: Option<String>,

    /// Decode quantized experts to the model dtype at load and run them unquantized (a
    /// reference for the quantized path; uses the float model's memory).
    #[arg(long, requires = "model")]
    dequantize: bool,

    /// Tokens to generate when no --input is given (at most 2^24).
    #[arg(long, value_name = "T", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=TOKENS))]
    tokens: u64,

    /// Seed of the synthetic weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Spread the routed experts over N expert-parallel ranks in this process (threads); each
    /// rank runs a contiguous slice of the input rows and rank 0 writes the gathered `y`.
    /// Under `mpirun -n N` (binary built with `--features mpi`) the MPI processes are the ranks.
    /// At most 1024 (one thread each).
    #[arg(long, value_name = "N", requires = "input", value_parser = clap::value_parser!(u64).range(1..=WORLD))]
    world: Option<u64>,

    /// Expert-parallel load balancing over the ranks: this many physical expert slots (>= experts;
    /// extra slots hold replicas of hot experts), rebalanced online every --eplb-updates
    /// iterations. Per-layer balancedness before/after each rebalance is printed.
    #[arg(long, value_name = "R", conflicts_with = "placement", value_parser = clap::value_parser!(u64).range(1..=SLOTS))]
    eplb_slots: Option<u64>,

    /// Iterations between online rebalances (0 = keep the initial placement).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "eplb_slots")]
    eplb_updates: usize,

    /// A static expert placement in TensorRT-LLM's YAML (`num_slots`, `layer_updates_per_iter`,
    /// `initial_global_assignments`), e.g. written by `moe eplb plan --yaml`.
    #[arg(long, value_name = "FILE.yaml")]
    placement: Option<PathBuf>,

    /// Run the forward this many times (lets online EPLB observe loads and migrate experts).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    iterations: u64,

    /// Write the run's tokens per expert as a load file for `moe eplb plan` / `moe eplb stats`.
    #[arg(long, value_name = "FILE")]
    record_stats: Option<PathBuf>,

    /// Communication strategy between ranks: auto, allgather, alltoall, packed (one collective
    /// per dispatch, for small batches).
    #[arg(long, value_name = "NAME", default_value = "auto")]
    comm: String,

    /// Skip the check that the layer's weights are finite (NaN or infinity in any float
    /// tensor of the block is refused by default, naming the tensor and element). For
    /// checkpoints you trust; the check costs a read of the block's bytes at load.
    #[arg(long, requires = "model")]
    trust_weights: bool,

    /// Debug check: fail when the output holds a NaN or infinity, naming its row and column
    /// (reads the output once after the forward).
    #[arg(long)]
    check_finite: bool,

    /// Print one machine-readable JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The help of `--backend`: the registry's names, in its priority order.
fn backend_help() -> String {
    format!(
        "Backend to run the routed experts on ({}); default: automatic selection",
        moe::BACKEND_NAMES.join(", ")
    )
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Quantize(args) => quantize(args),
        Command::Eplb(cmd) => eplb(cmd),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The context chain joined with ": " ("loading ...: missing tensor `x`"). Causes whose text
/// the message already contains are skipped: `MoeError::Io` prints its `io::Error` and also
/// exposes it as its source, which would otherwise be printed twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

/// Logs go to stderr and are off unless `RUST_LOG` asks for them, so stdout stays parseable.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let chunk = args.max_tokens_per_chunk.map(|n| n as usize);
    let tokens = args.tokens as usize;
    let mpi = ranks::mpi_world()?;
    let multi_rank = mpi.is_some() || args.world.is_some_and(|w| w > 1);
    if !multi_rank && (args.eplb_slots.is_some() || args.placement.is_some()) {
        anyhow::bail!("expert-parallel load balancing needs several ranks (--world N or mpirun)");
    }
    if !multi_rank && args.iterations > 1 {
        anyhow::bail!("--iterations repeats a multi-rank run (for online EPLB); use `moe bench` to time repeats");
    }
    if multi_rank && args.model.is_none() {
        // The synthetic layer is single-rank; multi-rank runs read a checkpoint and an input.
        anyhow::bail!("a multi-rank run needs --model and --input");
    }
    // Output locations are checked before anything loads: a bad one must not cost a forward,
    // and no output may overwrite what the run reads.
    let mut inputs: Vec<PathBuf> = args.model.as_deref().map(output::files_in).unwrap_or_default();
    inputs.extend(args.input.iter().cloned());
    inputs.extend(args.placement.iter().cloned());
    let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    for (path, what) in [(&args.output, "--output"), (&args.record_stats, "--record-stats")] {
        if let Some(p) = path {
            output::check_output(p, what, &inputs)?;
        }
    }
    if let (Some(o), Some(s)) = (&args.output, &args.record_stats)
        && output::same_file(o, s)
    {
        anyhow::bail!("--output and --record-stats name the same file `{}`", o.display());
    }
    let summary = match &args.model {
        Some(dir) => {
            let run = model_run::ModelRun {
                dir,
                layer: args.layer,
                input: args.input.as_deref(),
                input_key: &args.input_key,
                output: args.output.as_deref(),
                max_tokens_per_chunk: chunk,
                backend: args.backend.clone(),
                dequantize: args.dequantize,
                tokens,
                seed: args.seed,
                record_stats: args.record_stats.as_deref(),
                trust_weights: args.trust_weights,
                check_finite: args.check_finite,
            };
            if multi_rank {
                if mpi.is_some() && args.world.is_some() {
                    anyhow::bail!("--world starts in-process ranks; under mpirun the MPI processes are the ranks");
                }
                let layer = model_run::resolve_layer(dir, args.layer)?;
                let ranks = match mpi {
                    Some(g) => ranks::Ranks::Group(g),
                    None => ranks::Ranks::InProcess(args.world.unwrap_or(1) as usize),
                };
                let eplb = match (&args.placement, args.eplb_slots) {
                    (Some(path), _) => {
                        let text = input_files::read_bounded(path, "placement", moe_core::limits::MAX_PLACEMENT_BYTES)?;
                        let file = moe_eplb::load_placement_yaml(&text)
                            .with_context(|| format!("placement `{}`", path.display()))?;
                        Some(file.layer(layer)?)
                    }
                    (None, Some(num_slots)) => Some(moe_core::EplbConfig {
                        num_slots: num_slots as usize,
                        layer_updates_per_iter: args.eplb_updates,
                        initial_global_assignments: None,
                    }),
                    (None, None) => None,
                };
                let opts = ranks::RankOptions {
                    comm: &args.comm,
                    eplb,
                    iterations: args.iterations as usize,
                };
                match ranks::run(&run, layer, ranks, &opts)? {
                    Some(s) => s,
                    // Ranks other than 0 print nothing; rank 0 reports the gathered run.
                    None => return Ok(()),
                }
            } else {
                model_run::run(&run)?
            }
        }
        None => synthetic::run(&synthetic::SyntheticRun {
            tokens,
            seed: args.seed,
            max_tokens_per_chunk: chunk.unwrap_or(synthetic::DEFAULT_CHUNK),
            backend: args.backend.clone(),
            output: args.output.as_deref(),
            record_stats: args.record_stats.as_deref(),
            check_finite: args.check_finite,
        })?,
    };
    summary.print(args.json)
}

fn quantize(args: QuantizeArgs) -> anyhow::Result<()> {
    let summary = quantize::run(&quantize::QuantizeRun {
        model: &args.model,
        output: &args.output,
        format: args.format,
        max_shard_bytes: args.max_shard_mib.map(|m| (m as usize).saturating_mul(1 << 20)),
        calibration: args.calibration.as_deref().map(|p| (p, args.calibration_key.as_str())),
    })?;
    summary.print(args.json)
}

fn eplb(cmd: EplbCommand) -> anyhow::Result<()> {
    let (summary, json) = match cmd {
        EplbCommand::Plan(a) => {
            let inputs: Vec<&std::path::Path> =
                std::iter::once(a.load.as_path()).chain(a.previous.as_deref()).collect();
            output::check_output(&a.output, "--output", &inputs)?;
            let algorithm = match a.algorithm {
                AlgorithmArg::Deepseek => moe_eplb::Algorithm::DeepSeek,
                AlgorithmArg::Greedy => moe_eplb::Algorithm::Greedy,
                AlgorithmArg::Default => moe_eplb::Algorithm::Default {
                    max_changed_slots: a.max_changed_slots,
                },
            };
            let run = eplb_cmd::PlanRun {
                load: &a.load,
                num_slots: a.num_slots as usize,
                num_gpus: a.num_gpus as usize,
                num_nodes: a.num_nodes as usize,
                num_groups: a.num_groups as usize,
                algorithm,
                previous: a.previous.as_deref(),
                output: &a.output,
                yaml: a.yaml,
                first_layer: a.first_layer as usize,
            };
            (eplb_cmd::plan_cmd(&run)?, a.json)
        }
        EplbCommand::Stats(a) => {
            let geometry = a.num_slots.zip(a.num_gpus).map(|(s, g)| (s as usize, g as usize));
            (eplb_cmd::stats_cmd(&a.file, geometry)?, a.json)
        }
    };
    summary.print(json)
}

/// What a run prints: text for people, JSON for machines.
pub struct Summary {
    pub text: String,
    pub json: serde_json::Value,
}

impl Summary {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(&self.json)?);
        } else {
            print!("{}", self.text);
        }
        Ok(())
    }
}
