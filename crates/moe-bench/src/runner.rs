//! Building a preset's layer from the cache and timing its forward: warm-up, then the median
//! of the timed repeats, with FLOPs and the bytes of the experts the routing touched.

use std::time::Instant;

use moe::ConfigurableMoe;
use moe_core::{DType, MoeConfig, RoutingMethod, Tensor, WeightSource};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::ceilings::{Ceilings, median};
use crate::error::{BenchError, Context, Result};
use crate::preset::{Preset, WeightFormat, touched_experts};

/// Routing of every preset: softmax over the logits, top-k, renormalized (Mixtral, Qwen3).
/// DeepSeek-V3's sigmoid group routing is left out on purpose: the peer has none, and both
/// sides must select the same experts to read the same bytes. Routing is <0.5% of the work.
pub fn routing(preset: &Preset) -> RoutingMethod {
    RoutingMethod::Renormalize { top_k: preset.top_k }
}

/// The layer config of `preset` on `backend`, unchunked (a row is one forward of T tokens).
pub fn config(preset: &Preset, backend: &str) -> MoeConfig {
    let dtype = match preset.weights {
        WeightFormat::F32 => DType::F32,
        _ => DType::BF16,
    };
    let mut c = MoeConfig::new(preset.experts, preset.hidden, preset.inter, dtype, routing(preset));
    c.quant = preset.weights.quant();
    c.backend = Some(backend.to_string());
    c
}

/// Builds the layer of `preset` on `backend` and loads the cached weights into it.
pub fn build(preset: &Preset, backend: &str, cache: &Cache) -> Result<ConfigurableMoe> {
    build_from(config(preset, backend), preset, &cache.weights()?)
}

/// Builds the layer `config` describes (the config of `preset` on some backend), checks that
/// the factory honoured the pinned backend, and loads `weights` into it.
pub fn build_from(config: MoeConfig, preset: &Preset, weights: &dyn WeightSource) -> Result<ConfigurableMoe> {
    let backend = config.backend.clone().unwrap_or_default();
    let mut layer = moe::create_moe(config).with_context(|| format!("building the {} layer", preset.name))?;
    if layer.backend_name() != backend {
        return Err(BenchError::Invalid(format!(
            "backend `{backend}` cannot run {} (the factory chose `{}`):\n{}",
            preset.name,
            layer.backend_name(),
            layer.report()
        )));
    }
    layer
        .load_weights(weights)
        .with_context(|| format!("loading the {} weights from `{}`", preset.name, weights.describe()))?;
    Ok(layer)
}

/// One timed row: a preset at a token count on one backend (ours, or a peer's read back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub preset: String,
    pub weights: String,
    pub tokens: usize,
    pub backend: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub repeats: usize,
    /// Routed GFLOP of one forward.
    pub gflop: f64,
    /// Expert weight bytes one forward reads (distinct experts selected x bytes per expert).
    pub weight_bytes: u64,
    pub experts_touched: usize,
    pub gflops: f64,
    pub weight_gbps: f64,
}

impl Row {
    /// A row from a median time and the preset's arithmetic.
    pub fn new(preset: &Preset, tokens: usize, backend: &str, times_s: &mut [f64], touched: usize) -> Row {
        let med = median(times_s);
        let min = times_s.iter().copied().fold(f64::INFINITY, f64::min);
        let (flop, bytes) = (preset.flops(tokens), preset.weight_bytes(touched));
        Row {
            preset: preset.name.into(),
            weights: preset.weights.name().into(),
            tokens,
            backend: backend.into(),
            median_ms: med * 1e3,
            min_ms: min * 1e3,
            repeats: times_s.len(),
            gflop: flop / 1e9,
            weight_bytes: bytes,
            experts_touched: touched,
            gflops: flop / med / 1e9,
            weight_gbps: bytes as f64 / med / 1e9,
        }
    }

    /// Whether the row is memory-bound on this machine: fewer FLOPs per weight byte than
    /// the ceilings' balance point.
    pub fn memory_bound(&self, c: &Ceilings) -> bool {
        self.weight_bytes > 0 && self.gflop * 1e9 / (self.weight_bytes as f64) < c.balance()
    }

    pub fn gemm_ratio(&self, c: &Ceilings) -> f64 {
        self.gflops / c.gemm_gflops
    }

    pub fn read_ratio(&self, c: &Ceilings) -> f64 {
        self.weight_gbps / c.read_gbps
    }

    /// Roofline efficiency: the time the ceilings allow (`max(FLOP / GEMM, bytes / read)`)
    /// over the measured time.
    pub fn roofline_ratio(&self, c: &Ceilings) -> f64 {
        self.gemm_ratio(c).max(self.read_ratio(c))
    }
}

/// Distinct experts the routing selects for `logits` `[T, E]`.
pub fn touched(preset: &Preset, logits: &Tensor) -> Result<usize> {
    let (t, e) = (logits.rows(), logits.row_len());
    let out = routing(preset).apply_host(&logits.to_f32_vec("router logits")?, t, e)?;
    Ok(touched_experts(&out.ids, preset.experts))
}

/// Times `repeats` forwards of `layer` on `x` after `warmup` untimed ones.
pub fn time_forward(
    layer: &mut ConfigurableMoe,
    x: &Tensor,
    logits: &Tensor,
    warmup: usize,
    repeats: usize,
    tick: &dyn Fn(),
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        std::hint::black_box(layer.forward(x, logits)?);
        tick();
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let y = layer.forward(x, logits)?;
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(y);
        tick();
    }
    Ok(times)
}

/// Default timed repeats of a row: more for short forwards, where one sample is noisy, fewer
/// for the multi-second ones. `est_s` is the expected forward time.
pub fn default_repeats(est_s: f64) -> usize {
    if est_s < 0.05 {
        15
    } else if est_s < 1.0 {
        7
    } else {
        3
    }
}

/// A rough forward time for planning (repeat counts, what the default run leaves out):
/// 100 GFLOP/s or 15 GB/s, whichever is slower.
pub fn estimate_s(preset: &Preset, tokens: usize) -> f64 {
    let bytes = preset.weight_bytes(preset.expected_touched(tokens).round() as usize) as f64;
    (preset.flops(tokens) / 100e9).max(bytes / 15e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_metrics_by_hand() {
        let p = Preset::find("tiny").unwrap();
        // T = 8: 8 * 24576 FLOP = 196608; 5 experts touched = 61440 bytes; median 2 ms.
        let mut times = [0.003, 0.002, 0.001];
        let r = Row::new(&p, 8, "cpu", &mut times, 5);
        assert!((r.median_ms - 2.0).abs() < 1e-9 && (r.min_ms - 1.0).abs() < 1e-9);
        assert!((r.gflops - 196608.0 / 0.002 / 1e9).abs() < 1e-12);
        assert!((r.weight_gbps - 61440.0 / 0.002 / 1e9).abs() < 1e-12);
        // Balance 100 / 20 = 5 FLOP/B; this row does 196608 / 61440 = 3.2 FLOP/B: memory-bound.
        let c = Ceilings {
            gemm_n: 0,
            gemm_gflops: 100.0,
            gemv_bytes: 0,
            read_gbps: 20.0,
            threads: 1,
        };
        assert!(r.memory_bound(&c));
        assert!((r.roofline_ratio(&c) - r.weight_gbps / 20.0).abs() < 1e-12);
    }

    #[test]
    fn repeats_shrink_with_the_forward_time() {
        assert_eq!(default_repeats(0.001), 15);
        assert_eq!(default_repeats(0.5), 7);
        assert_eq!(default_repeats(10.0), 3);
        let q = Preset::find("qwen3-30b-a3b").unwrap();
        assert!(estimate_s(&q, 1) < estimate_s(&q, 4096));
    }
}
