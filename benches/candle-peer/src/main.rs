//! `candle-peer`: candle's CPU MoE path, timed on the same weights and inputs as `moe bench`.
//!
//! The block is candle-transformers' sparse MoE block (Mixtral, Qwen2/3-MoE) as written
//! there: router softmax on the device, routing weights copied to the host (`to_vec2`),
//! top-k and renormalization per token on the host, then a loop over experts that
//! `index_select`s the expert's rows, runs `w2(silu(w1(x)) * w3(x))` through
//! `candle_nn::Linear`, scales by the routing weights and `index_add`s into the output.
//! The router logits come from the cache (the gate linear is not part of either side's
//! timing). Weights stay in their cached dtype: bf16 experts run bf16 matmuls; FP8-block
//! experts (candle has no FP8 matmul on CPU) are dequantized with candle ops per expert and
//! forward, to f32, and multiplied in f32 — the only way to run them in candle within this
//! machine's memory (dequantized once they would need 45 GB in f32, 22.5 GB in bf16).
//!
//! `--q4 q4_0|q4k` runs the 4-bit peer instead: the same block with candle's quantized matmul
//! (`QMatMul` over GGUF Q4_0 or Q4K tensors) per expert, as candle-transformers' quantized MoE
//! models run it, on the cache's shapes, inputs and router logits (`quant.rs`).
//!
//! Usage: `candle-peer --cache DIR --rows T:REPEATS[,T:REPEATS...] [--warmup N] [--budget-s S] [--q4 q4_0|q4k]`;
//! prints one JSON object per row: `preset, weights, tokens, backend, median_ms, min_ms,
//! repeats`. A row stops repeating once its timed forwards took `S` seconds (default 60; at
//! least 3 run), so candle's slowest rows do not take many minutes each.
//!
//! candle is behind the `candle` feature (`cargo xtask bench` enables it), so that
//! `cargo test --workspace` and `cargo build --workspace` build this crate as a stub and never
//! compile candle.

#[cfg(feature = "candle")]
mod peer;
#[cfg(feature = "candle")]
mod quant;

#[cfg(feature = "candle")]
fn run() -> Result<(), String> {
    peer::run()
}

#[cfg(not(feature = "candle"))]
fn run() -> Result<(), String> {
    Err("built without the `candle` feature; build it with `cargo build --release -p candle-peer --features candle` (as `cargo xtask bench` does)".into())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("candle-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
