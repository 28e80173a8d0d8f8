//! The embedded default of `moe run`: a synthetic, deterministic DeepSeek-V3-style layer
//! generated in memory (no files), timed over a few thousand tokens in chunks.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moe_core::{DType, MemoryWeights, MoeConfig, RoutingMethod, Tensor};
use serde_json::json;

use crate::Summary;
use crate::stats::{Balance, routed_flops};
use crate::tensor_io::write_tensor;
use moe_core::prng::SplitMix64;

pub const EXPERTS: usize = 64;
pub const TOP_K: usize = 6;
pub const N_GROUP: usize = 8;
pub const TOPK_GROUP: usize = 4;
pub const HIDDEN: usize = 1024;
pub const INTER: usize = 256;
pub const ROUTED_SCALING: f32 = 2.5;
pub const DEFAULT_CHUNK: usize = 512;

/// Parameters of a synthetic run.
pub struct SyntheticRun<'a> {
    pub tokens: usize,
    pub seed: u64,
    pub max_tokens_per_chunk: usize,
    pub backend: Option<String>,
    pub output: Option<&'a Path>,
    /// Write tokens per expert here (`--record-stats`).
    pub record_stats: Option<&'a Path>,
    /// Refuse a non-finite output (`--check-finite`).
    pub check_finite: bool,
}

pub fn run(r: &SyntheticRun<'_>) -> anyhow::Result<Summary> {
    let mut rng = SplitMix64::new(r.seed);
    let (e, h, i, t) = (EXPERTS, HIDDEN, INTER, r.tokens);

    // Router: a random gate; DeepSeek computes logits in f32 and corrects scores with a bias.
    let gate = Tensor::from_f32(vec![e, h], rng.fill(e * h, (3.0 / h as f32).sqrt()))?;
    let bias = rng.fill(e, 0.1);
    let routing = RoutingMethod::DeepSeekV3 {
        top_k: TOP_K,
        n_group: N_GROUP,
        topk_group: TOPK_GROUP,
        routed_scaling_factor: ROUTED_SCALING,
        e_score_correction_bias: Some(bias),
        renormalize: true,
    };
    let mut config = MoeConfig::new(e, h, i, DType::BF16, routing.clone());
    config.moe_max_num_tokens = Some(r.max_tokens_per_chunk);
    config.backend = r.backend.clone();

    // Experts: uniform weights with variance 1/fan_in, so activations stay O(1).
    let mut weights = MemoryWeights::new();
    let (a_in, a_mid) = ((3.0 / h as f32).sqrt(), (3.0 / i as f32).sqrt());
    for ex in 0..e {
        for (w, rows, cols, a) in [("w1", i, h, a_in), ("w3", i, h, a_in), ("w2", h, i, a_mid)] {
            let t = Tensor::from_f32_as(DType::BF16, vec![rows, cols], &rng.fill(rows * cols, a))?;
            weights.insert(format!("{ex}.{w}.weight"), t);
        }
    }
    let x = Tensor::from_f32_as(DType::BF16, vec![t, h], &rng.fill(t * h, 3f32.sqrt()))?;

    let mut layer = moe::create_moe(config).context("building the synthetic layer")?;
    layer
        .load_weights(&weights)
        .context("loading the synthetic layer's weights")?;
    drop(weights);
    let logits = moe::ops::linear(&x, &gate, None)?;
    let balance = Balance::from_logits(&routing, &logits)?;

    // Feed the layer one chunk at a time so the progress bar can advance; the layer's own
    // chunk limit is the same, so each call is exactly one of its chunks.
    let chunk = r.max_tokens_per_chunk;
    let n_chunks = t.div_ceil(chunk);
    let bar = progress(n_chunks as u64);
    let mut outs = Vec::with_capacity(n_chunks);
    let start = Instant::now();
    for c in 0..n_chunks {
        let (s, len) = (c * chunk, chunk.min(t - c * chunk));
        let xc = x.narrow_rows(s, len)?;
        let lc = logits.narrow_rows(s, len)?;
        outs.push(
            layer
                .forward(&xc, &lc)
                .with_context(|| format!("forward of chunk {c}"))?,
        );
        bar.inc(1);
    }
    let wall = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let y = Tensor::concat_rows(&outs)?;
    if r.check_finite {
        crate::tensor_io::check_finite_output("the output y", &y)?;
    }
    if let Some(path) = r.output {
        write_tensor(path, "y", &y)?;
    }

    let flops = routed_flops(t, TOP_K, h, i);
    let gflops = flops / wall.max(1e-9) / 1e9;
    let mut text = format!(
        "moe run: synthetic DeepSeek-V3-style layer (seed {})\n\
         layer: E={e} k={TOP_K} n_group={N_GROUP} topk_group={TOPK_GROUP} H={h} I={i} dtype=bf16 \
         tokens={t} chunk={chunk}\n",
        r.seed
    );
    text.push_str(&layer.report().to_string());
    text.push_str(&balance.line());
    if let Some(path) = r.record_stats {
        crate::eplb_cmd::record_stats(path, &balance.per_expert)?;
        text.push_str(&format!("recorded tokens per expert to {}\n", path.display()));
    }
    text.push_str(&format!(
        "forward: {t} tokens in {wall:.3} s ({:.0} tokens/s), {:.2} GFLOP routed -> {gflops:.2} GFLOP/s\n",
        t as f64 / wall.max(1e-9),
        flops / 1e9
    ));
    if let Some(path) = r.output {
        text.push_str(&format!("wrote y {:?} bf16 to {}\n", y.shape(), path.display()));
    }
    let json = json!({
        "mode": "synthetic",
        "seed": r.seed,
        "backend": layer.backend_name(),
        "config": layer.config(),
        "report": layer.report(),
        "tokens": t,
        "chunks": n_chunks,
        "balance": balance,
        "wall_s": wall,
        "gflop": flops / 1e9,
        "gflop_per_s": gflops,
        "output": r.output.map(|p| p.display().to_string()),
    });
    Ok(Summary { text, json })
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (pipes, CI, tests).
pub fn progress(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() || len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} chunk {pos}/{len} {bar:30} {elapsed}") {
        bar.set_style(style);
    }
    bar
}
