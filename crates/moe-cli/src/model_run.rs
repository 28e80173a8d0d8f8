//! `moe run --model DIR`: the MoE block of one layer of a Hugging Face checkpoint (float or
//! quantized) on the rows of an input tensor, with the output written to a safetensors file.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use moe_core::{MoeConfig, Tensor};
use moe_hf::{BlockOptions, HfConfig, MoeBlock};
use serde_json::json;

use crate::Summary;
use crate::stats::{Balance, routed_flops};
use crate::tensor_io::{check_finite_output, read_tensor, write_tensor};
use moe_core::prng::SplitMix64;

/// Parameters of a checkpoint run.
pub struct ModelRun<'a> {
    pub dir: &'a Path,
    pub layer: Option<usize>,
    pub input: Option<&'a Path>,
    pub input_key: &'a str,
    pub output: Option<&'a Path>,
    pub max_tokens_per_chunk: Option<usize>,
    pub backend: Option<String>,
    /// Run quantized experts dequantized (`--dequantize`).
    pub dequantize: bool,
    /// Rows of random input when there is no `input`.
    pub tokens: usize,
    pub seed: u64,
    /// Write tokens per expert here (`--record-stats`).
    pub record_stats: Option<&'a Path>,
    /// Skip the finite-weight check (`--trust-weights`).
    pub trust_weights: bool,
    /// Refuse a non-finite output (`--check-finite`).
    pub check_finite: bool,
}

/// The finite-weight check of layer `layer` unless `--trust-weights`; returns the line the
/// summary prints (what was checked and how long it took) and the JSON of it.
pub fn check_weights(r: &ModelRun<'_>, layer: usize) -> anyhow::Result<(String, serde_json::Value)> {
    if r.trust_weights {
        return Ok(("weights: finite check skipped (--trust-weights)\n".into(), json!(null)));
    }
    let start = Instant::now();
    let rep = moe_hf::check_layer_finite(r.dir, layer)
        .with_context(|| format!("checking the weights of layer {layer} of `{}`", r.dir.display()))?;
    let secs = start.elapsed().as_secs_f64();
    Ok((
        format!(
            "weights: {} tensors, {} elements ({} bytes) finite, checked in {secs:.4} s\n",
            rep.tensors, rep.elements, rep.bytes
        ),
        json!({ "tensors": rep.tensors, "elements": rep.elements, "bytes": rep.bytes, "seconds": secs }),
    ))
}

/// `--layer`, or the model's first MoE layer.
pub fn resolve_layer(dir: &Path, layer: Option<usize>) -> anyhow::Result<usize> {
    match layer {
        Some(l) => Ok(l),
        None => {
            let hf = HfConfig::from_dir(dir).with_context(|| format!("reading the config of `{}`", dir.display()))?;
            Ok(hf
                .first_moe_layer()
                .with_context(|| format!("model `{}` has no MoE layer", dir.display()))?)
        }
    }
}

pub fn run(r: &ModelRun<'_>) -> anyhow::Result<Summary> {
    let dir = r.dir;
    let layer = resolve_layer(dir, r.layer)?;
    let opts = BlockOptions {
        backend: r.backend.clone(),
        max_tokens_per_chunk: r.max_tokens_per_chunk,
        dtype: None,
        dequantize: r.dequantize,
    };
    let (finite_line, finite_json) = check_weights(r, layer)?;
    let load_start = Instant::now();
    let mut block = MoeBlock::load(dir, layer, opts)
        .with_context(|| format!("loading the MoE block of layer {layer} of `{}`", dir.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();

    let x = match r.input {
        Some(path) => read_tensor(path, r.input_key)?,
        None => {
            let h = block.hidden_size();
            let v = SplitMix64::new(r.seed).fill(r.tokens * h, 3f32.sqrt());
            Tensor::from_f32_as(block.dtype(), vec![r.tokens, h], &v)?
        }
    };
    let what = match r.input {
        Some(p) => format!("input `{}` of `{}`", r.input_key, p.display()),
        None => "random input".to_string(),
    };
    let start = Instant::now();
    let y = block
        .forward(&x)
        .with_context(|| format!("running the block on {what}"))?;
    let wall = start.elapsed().as_secs_f64();
    if r.check_finite {
        check_finite_output("the output y", &y)?;
    }
    if let Some(path) = r.output {
        write_tensor(path, "y", &y)?;
    }

    let config: &MoeConfig = block.config();
    let t = x.rows();
    let balance = Balance::from_logits(&config.routing, &block.router_logits(&x.to_dtype(block.dtype())?)?)?;
    let flops = routed_flops(t, config.top_k(), config.hidden_size, config.intermediate_size);
    let gflops = flops / wall.max(1e-9) / 1e9;
    let mut text = format!(
        "moe run: {} layer {layer} of {} (prefix {})\n\
         layer: E={} k={} H={} I={} shared I={} dtype={} tokens={t} chunk={}\n",
        block.family(),
        dir.display(),
        block.prefix(),
        config.num_experts,
        config.top_k(),
        config.hidden_size,
        config.intermediate_size,
        block.shared_intermediate_size().map_or("-".into(), |s| s.to_string()),
        block.dtype(),
        r.max_tokens_per_chunk.map_or("unlimited".into(), |c| c.to_string()),
    );
    let quant = block.checkpoint_quant();
    let (resident, on_disk) = (block.expert_resident_bytes(), block.expert_disk_bytes());
    text.push_str(&format!(
        "experts: {}{}; {resident} bytes resident, {on_disk} bytes on disk\n",
        quant.name(),
        if r.dequantize && quant != moe_hf::CheckpointQuant::None {
            " (dequantized at load)"
        } else {
            ""
        },
    ));
    text.push_str(&finite_line);
    text.push_str(&block.report().to_string());
    text.push_str(&balance.line());
    if let Some(path) = r.record_stats {
        crate::eplb_cmd::record_stats(path, &balance.per_expert)?;
        text.push_str(&format!("recorded tokens per expert to {}\n", path.display()));
    }
    text.push_str(&format!(
        "load: {load_s:.3} s; forward: {t} tokens in {wall:.3} s, {:.3} GFLOP routed -> {gflops:.2} GFLOP/s\n",
        flops / 1e9
    ));
    if let Some(path) = r.output {
        text.push_str(&format!(
            "wrote y {:?} {} to {}\n",
            y.shape(),
            y.dtype(),
            path.display()
        ));
    }
    let json = json!({
        "mode": "model",
        "model": dir.display().to_string(),
        "family": block.family().name(),
        "layer": layer,
        "prefix": block.prefix(),
        "dtype": block.dtype(),
        "backend": block.backend_name(),
        "config": config,
        "report": block.report(),
        "experts": {
            "format": quant.name(),
            "dequantized": r.dequantize,
            "resident_bytes": resident,
            "disk_bytes": on_disk,
        },
        "tokens": t,
        "balance": balance,
        "finite_check": finite_json,
        "load_s": load_s,
        "wall_s": wall,
        "gflop": flops / 1e9,
        "gflop_per_s": gflops,
        "output": r.output.map(|p| p.display().to_string()),
    });
    Ok(Summary { text, json })
}
