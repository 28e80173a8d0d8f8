//! The `moe` command-line tool.
//!
//! `moe run` with no arguments runs an embedded synthetic DeepSeek-V3-style layer and prints
//! the backend resolution report, routing balance, wall time and GFLOP/s. With `--model DIR`
//! it runs the MoE block of a Hugging Face checkpoint on rows of a safetensors tensor and
//! writes the output. Errors print `error: <message chain>` and exit non-zero.

mod model_run;
mod prng;
mod stats;
mod synthetic;
mod tensor_io;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// the result is written as tensor `y` to --output.
    Run(RunArgs),
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens_per_chunk: Option<u64>,

    /// Backend to run the routed experts on (reference, cpu); default: automatic selection.
    #[arg(long, value_name = "NAME")]
    backend: Option<String>,

    /// Tokens to generate when no --input is given.
    #[arg(long, value_name = "T", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,

    /// Seed of the synthetic weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Print one machine-readable JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
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
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let chunk = args.max_tokens_per_chunk.map(|n| n as usize);
    let tokens = args.tokens as usize;
    let summary = match &args.model {
        Some(dir) => model_run::run(&model_run::ModelRun {
            dir,
            layer: args.layer,
            input: args.input.as_deref(),
            input_key: &args.input_key,
            output: args.output.as_deref(),
            max_tokens_per_chunk: chunk,
            backend: args.backend.clone(),
            tokens,
            seed: args.seed,
        })?,
        None => synthetic::run(&synthetic::SyntheticRun {
            tokens,
            seed: args.seed,
            max_tokens_per_chunk: chunk.unwrap_or(synthetic::DEFAULT_CHUNK),
            backend: args.backend.clone(),
            output: args.output.as_deref(),
        })?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary.json)?);
    } else {
        print!("{}", summary.text);
    }
    Ok(())
}

/// What a run prints: text for people, JSON for machines.
pub struct Summary {
    pub text: String,
    pub json: serde_json::Value,
}
