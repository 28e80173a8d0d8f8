//! The candle side of the peer: candle-transformers' sparse MoE block and its timing loop
//! (see the crate docs in `main.rs`). Compiled only with the `candle` feature.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Linear;

use crate::quant::{self, QExpert};

/// The fields of the bench cache's `meta.json` this binary reads.
#[derive(serde::Deserialize)]
struct Meta {
    preset: String,
    hidden: usize,
    inter: usize,
    experts: usize,
    top_k: usize,
    weights: String,
    shards: Vec<String>,
    input_rows: usize,
}

/// Side of an FP8 scale block (DeepSeek-V3).
const FP8_BLOCK: usize = 128;

/// One projection as stored in the cache.
enum Weight {
    Dense(Tensor),
    /// E4M3 codes `[rows, cols]` and f32 multipliers `[rows / 128, cols / 128]`.
    Fp8 {
        codes: Tensor,
        scales: Tensor,
    },
}

impl Weight {
    fn load(st: &MmapedSafetensors, name: &str, fp8: bool) -> Result<Weight> {
        let w = st.load(&format!("{name}.weight"), &Device::Cpu)?;
        if !fp8 {
            return Ok(Weight::Dense(w));
        }
        let scales = st.load(&format!("{name}.weight_scale_inv"), &Device::Cpu)?;
        Ok(Weight::Fp8 { codes: w, scales })
    }

    /// The weight as a `Linear`: dense weights as they are, FP8 ones dequantized with candle
    /// ops (`codes * scale` broadcast over each 128x128 block).
    fn linear(&self) -> Result<Linear> {
        match self {
            Weight::Dense(w) => Ok(Linear::new(w.clone(), None)),
            Weight::Fp8 { codes, scales } => {
                let (rows, cols) = codes.dims2()?;
                let (nr, nc) = (rows / FP8_BLOCK, cols / FP8_BLOCK);
                let w = codes
                    .to_dtype(DType::F32)?
                    .reshape((nr, FP8_BLOCK, nc, FP8_BLOCK))?
                    .broadcast_mul(&scales.reshape((nr, 1, nc, 1))?)?
                    .reshape((rows, cols))?;
                Ok(Linear::new(w, None))
            }
        }
    }
}

/// An expert of the block: dense (bf16, or FP8 dequantized) or GGUF 4-bit (`--q4`).
enum AnyExpert {
    Dense(Expert),
    Q4(QExpert),
}

impl AnyExpert {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            AnyExpert::Dense(e) => e.forward(xs),
            AnyExpert::Q4(e) => e.forward(xs),
        }
    }
}

/// candle-transformers' Mixtral `BlockSparseTop2MLP` (gate `w1`, down `w2`, up `w3`, SiLU).
struct Expert {
    w1: Weight,
    w2: Weight,
    w3: Weight,
}

impl Expert {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let lhs = self.w1.linear()?.forward(xs)?.silu()?;
        let rhs = self.w3.linear()?.forward(xs)?;
        (lhs * rhs)?.apply(&self.w2.linear()?)
    }
}

/// candle-transformers' `SparseMoeBlock::forward`, with the router logits given.
struct Block {
    experts: Vec<AnyExpert>,
    top_k: usize,
    /// Compute dtype of the expert matmuls (bf16, or f32 for dequantized FP8).
    dtype: DType,
}

impl Block {
    fn forward(&self, xs: &Tensor, router_logits: &Tensor) -> Result<Tensor> {
        let (_, hidden_dim) = xs.dims2()?;
        let xs = xs.to_dtype(self.dtype)?;
        let routing_weights = candle_nn::ops::softmax_last_dim(router_logits)?;
        // The host copy every candle MoE layer makes (candle issue #1421).
        let routing_weights = routing_weights.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut top_x = vec![vec![]; self.experts.len()];
        let mut selected_rws = vec![vec![]; self.experts.len()];
        for (row_idx, rw) in routing_weights.iter().enumerate() {
            let mut dst = (0..rw.len() as u32).collect::<Vec<u32>>();
            dst.sort_by(|&i, &j| rw[j as usize].total_cmp(&rw[i as usize]));
            let mut sum_routing_weights = 0f32;
            for &expert_idx in dst.iter().take(self.top_k) {
                sum_routing_weights += rw[expert_idx as usize];
            }
            for &expert_idx in dst.iter().take(self.top_k) {
                let expert_idx = expert_idx as usize;
                top_x[expert_idx].push(row_idx as u32);
                selected_rws[expert_idx].push(rw[expert_idx] / sum_routing_weights)
            }
        }
        let mut ys = xs.zeros_like()?;
        for (expert_idx, expert_layer) in self.experts.iter().enumerate() {
            let top_x = &top_x[expert_idx];
            if top_x.is_empty() {
                continue;
            }
            let top_x = Tensor::new(top_x.as_slice(), xs.device())?;
            let selected_rws = Tensor::new(selected_rws[expert_idx].as_slice(), xs.device())?
                .reshape(((), 1))?
                .to_dtype(xs.dtype())?;
            let current_state = xs.index_select(&top_x, 0)?.reshape(((), hidden_dim))?;
            let current_hidden_states = expert_layer.forward(&current_state)?;
            let current_hidden_states = current_hidden_states.broadcast_mul(&selected_rws)?;
            ys = ys.index_add(&top_x, &current_hidden_states, 0)?;
        }
        Ok(ys)
    }
}

struct Args {
    cache: PathBuf,
    rows: Vec<(usize, usize)>,
    warmup: usize,
    /// Seconds of timed forwards per row after which no more repeats start (at least 3 run):
    /// candle's FP8 rows take tens of seconds per forward.
    budget_s: f64,
    /// `q4_0` or `q4k`: GGUF 4-bit experts quantized from random floats (see `quant.rs`)
    /// instead of the cache's weights.
    q4: Option<String>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut cache, mut rows, mut warmup, mut budget_s, mut q4) = (None, Vec::new(), 1usize, 60.0f64, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cache" => cache = Some(PathBuf::from(value()?)),
            "--rows" => {
                for pair in value()?.split(',') {
                    let (t, r) = pair.split_once(':').unwrap_or((pair, "3"));
                    let parse = |s: &str| s.parse::<usize>().map_err(|e| format!("--rows `{pair}`: {e}"));
                    rows.push((parse(t)?, parse(r)?.max(1)));
                }
            }
            "--warmup" => warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--budget-s" => budget_s = value()?.parse().map_err(|e| format!("--budget-s: {e}"))?,
            "--q4" => q4 = Some(value()?),
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    let cache = cache.ok_or("--cache DIR is required")?;
    if rows.is_empty() {
        return Err("--rows T:REPEATS,... is required".into());
    }
    Ok(Args {
        cache,
        rows,
        warmup,
        budget_s,
        q4,
    })
}

/// The block of `meta`'s shape with 4-bit experts of `dtype` (the cache's weights unread).
fn load_q4(meta: &Meta, dtype: candle_core::quantized::GgmlDType) -> Result<Block> {
    let experts = (0..meta.experts)
        .map(|e| QExpert::new(e, meta.hidden, meta.inter, dtype).map(AnyExpert::Q4))
        .collect::<Result<Vec<_>>>()?;
    Ok(Block {
        experts,
        top_k: meta.top_k,
        dtype: DType::F32,
    })
}

fn load(dir: &Path, meta: &Meta) -> Result<Block> {
    let paths: Vec<PathBuf> = meta.shards.iter().map(|s| dir.join(s)).collect();
    // SAFETY: the cache files are written once by `moe bench` and not modified while mapped.
    let st = unsafe { MmapedSafetensors::multi(&paths)? };
    let fp8 = meta.weights == "fp8-block";
    let dtype = match meta.weights.as_str() {
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let mut experts = Vec::with_capacity(meta.experts);
    for e in 0..meta.experts {
        let w = |p: &str| Weight::load(&st, &format!("{e}.{p}"), fp8);
        experts.push(AnyExpert::Dense(Expert {
            w1: w("w1")?,
            w2: w("w2")?,
            w3: w("w3")?,
        }));
    }
    Ok(Block {
        experts,
        top_k: meta.top_k,
        dtype,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn run() -> std::result::Result<(), String> {
    let args = parse_args()?;
    let meta_path = args.cache.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| format!("reading {}: {e}", meta_path.display()))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let block = match &args.q4 {
        Some(name) => load_q4(&meta, quant::dtype(name)?),
        None => load(&args.cache, &meta),
    }
    .map_err(|e| format!("loading the experts: {e}"))?;
    let weights = args.q4.clone().unwrap_or_else(|| meta.weights.clone());
    // SAFETY: as above, the inputs file is not modified while mapped.
    let inputs = unsafe { MmapedSafetensors::new(args.cache.join("inputs.safetensors")) }.map_err(|e| e.to_string())?;
    let x_all = inputs.load("x", &Device::Cpu).map_err(|e| e.to_string())?;
    let logits_all = inputs.load("logits", &Device::Cpu).map_err(|e| e.to_string())?;
    for &(tokens, repeats) in &args.rows {
        if tokens > meta.input_rows {
            return Err(format!(
                "the cache holds {} input rows, {tokens} asked (run `moe bench --prepare` first)",
                meta.input_rows
            ));
        }
        let x = x_all
            .narrow(0, 0, tokens)
            .and_then(|t| t.contiguous())
            .map_err(|e| e.to_string())?;
        let logits = logits_all
            .narrow(0, 0, tokens)
            .and_then(|t| t.contiguous())
            .map_err(|e| e.to_string())?;
        let forward = || -> Result<f64> {
            let t = Instant::now();
            let y = block.forward(&x, &logits)?;
            // Force the result (candle's CPU ops are eager; this only reads one value).
            let _ = y.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(t.elapsed().as_secs_f64())
        };
        for _ in 0..args.warmup {
            forward().map_err(|e| e.to_string())?;
        }
        let mut times = Vec::with_capacity(repeats);
        while times.len() < repeats && (times.len() < 3 || times.iter().sum::<f64>() < args.budget_s) {
            times.push(forward().map_err(|e| e.to_string())?);
        }
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        let line = serde_json::json!({
            "preset": meta.preset,
            "weights": weights,
            "hidden": meta.hidden,
            "inter": meta.inter,
            "tokens": tokens,
            "backend": "candle",
            "candle": "0.11",
            "median_ms": med * 1e3,
            "min_ms": min * 1e3,
            "repeats": times.len(),
        });
        println!("{line}");
    }
    Ok(())
}
