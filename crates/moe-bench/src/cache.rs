//! Random benchmark weights and inputs, generated once per (preset, format, seed) and cached
//! on disk as safetensors, so every later run (ours and the peer's) reads the same bytes.
//!
//! Layout of one cache directory (`<cache>/<preset>-<format>-seed<S>-v<V>/`):
//! - `experts-NNNNN.safetensors`: shards of whole experts under the canonical names
//!   (`{e}.w1.weight`, `{e}.w3.weight`, `{e}.w2.weight`, plus `.weight_scale_inv` for FP8
//!   block weights), with `model.safetensors.index.json` mapping names to shards, so it opens
//!   as a sharded checkpoint ([`moe_hf::Checkpoint`]) and in candle
//!   (`MmapedSafetensors::multi`);
//! - `inputs.safetensors`: `x` `[T, H]` bf16 and `logits` `[T, E]` f32, both N(0, 1);
//! - `meta.json`: the shape, format, seed and input rows; written last, so a directory with
//!   it is complete (an interrupted generation is redone, never half-read).
//!
//! Weights are uniform with variance `1 / fan_in` (activations stay O(1) through the layer);
//! FP8 block weights are those values quantized by `moe_quant`'s DeepSeek quantizer. Each
//! matrix and each input row has its own seed, so the content does not depend on the shard
//! size, the thread count, or how many input rows were asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, Tensor, TensorView, WeightSource};
use moe_hf::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Context, Result};
use crate::preset::{Preset, WeightFormat};
use moe_core::prng::{GAMMA, SplitMix64};

/// Bumped whenever the generated content changes, so stale caches are not reused.
pub const CACHE_VERSION: u32 = 1;
/// Largest shard written, in bytes (a shard is generated in memory before it is written).
const SHARD_BYTES: u64 = 1 << 30;
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const INPUTS_FILE: &str = "inputs.safetensors";
pub const META_FILE: &str = "meta.json";

/// What `meta.json` records; the candle peer reads the same file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub preset: String,
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub top_k: usize,
    pub weights: String,
    pub seed: u64,
    pub shards: Vec<String>,
    /// Rows of `x` and `logits` in the inputs file.
    pub input_rows: usize,
}

/// A complete cache directory of one preset.
#[derive(Debug)]
pub struct Cache {
    pub dir: PathBuf,
    pub meta: Meta,
}

/// Called with (done, total) experts while generating.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Directory of `preset`'s cache under `root`.
pub fn dir_of(root: &Path, preset: &Preset, seed: u64) -> PathBuf {
    root.join(format!(
        "{}-{}-seed{seed}-v{CACHE_VERSION}",
        preset.name,
        preset.weights.name()
    ))
}

/// Opens the cache of `preset` under `root`, generating whatever is missing: the weights when
/// the directory is absent or incomplete, the inputs when they have fewer than `rows` rows.
pub fn ensure(root: &Path, preset: &Preset, seed: u64, rows: usize, progress: Progress<'_>) -> Result<Cache> {
    let dir = dir_of(root, preset, seed);
    let meta_path = dir.join(META_FILE);
    let expected = |shards: Vec<String>, input_rows: usize| Meta {
        version: CACHE_VERSION,
        preset: preset.name.into(),
        hidden: preset.hidden,
        inter: preset.inter,
        experts: preset.experts,
        top_k: preset.top_k,
        weights: preset.weights.name().into(),
        seed,
        shards,
        input_rows,
    };
    let existing: Option<Meta> = std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut meta = match existing {
        Some(m) if m == expected(m.shards.clone(), m.input_rows) && m.shards.iter().all(|s| dir.join(s).is_file()) => m,
        _ => {
            // Incomplete or from another version: start over.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing the stale cache `{}`", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the cache directory `{}`", dir.display()))?;
            let shards = write_experts(&dir, preset, seed, progress)?;
            expected(shards, 0)
        }
    };
    if meta.input_rows < rows || !dir.join(INPUTS_FILE).is_file() {
        write_inputs(&dir, preset, seed, rows)?;
        meta.input_rows = rows;
    }
    let text = serde_json::to_string_pretty(&meta)?;
    std::fs::write(&meta_path, text).with_context(|| format!("writing `{}`", meta_path.display()))?;
    Ok(Cache { dir, meta })
}

impl Cache {
    /// The expert weights, memory-mapped, under their canonical names.
    pub fn weights(&self) -> Result<CachedWeights> {
        let ck = Checkpoint::open(&self.dir)
            .with_context(|| format!("opening the weight cache `{}`", self.dir.display()))?;
        Ok(CachedWeights(ck))
    }

    /// The first `rows` rows of `x` (bf16 `[rows, H]`) and of the router logits (f32 `[rows, E]`).
    pub fn inputs(&self, rows: usize) -> Result<(Tensor, Tensor)> {
        let path = self.dir.join(INPUTS_FILE);
        let ck = Checkpoint::open_file(&path).with_context(|| format!("opening `{}`", path.display()))?;
        let x = ck.tensor("x")?.to_tensor("x")?.narrow_rows(0, rows)?;
        let logits = ck.tensor("logits")?.to_tensor("logits")?.narrow_rows(0, rows)?;
        Ok((x, logits))
    }
}

/// The cache's weights as a [`WeightSource`] for `ConfigurableMoe::load_weights`.
#[derive(Debug)]
pub struct CachedWeights(Checkpoint);

impl WeightSource for CachedWeights {
    fn get(&self, name: &str) -> moe_core::Result<Option<TensorView<'_>>> {
        self.0.get(name)
    }

    fn names(&self) -> Vec<String> {
        self.0.names().map(String::from).collect()
    }

    fn describe(&self) -> String {
        self.0.dir().display().to_string()
    }
}

/// A seed per (run seed, stream, index): independent streams without a shared generator.
pub(crate) fn stream_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut g = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ index.wrapping_mul(GAMMA));
    g.next_u64()
}

/// `n` standard normal values (Box-Muller over splitmix64).
pub fn normals(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 53-bit uniforms in (0, 1]; `u1 > 0` keeps the log finite.
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        out.push((r * c) as f32);
        out.push((r * s) as f32);
    }
    out.truncate(n);
    out
}

/// Activation amax the static input scales of the quantized formats (NVFP4, FP8 per tensor)
/// are set from: the bench's inputs are standard normal, whose largest of ~10^7 values is
/// about 5.3, and the FC2 input (the SwiGLU of O(1) values) stays below it.
const BENCH_INPUT_AMAX: f32 = 6.0;

/// Tensors of expert `e`, in name order.
pub(crate) fn expert_tensors(preset: &Preset, seed: u64, e: usize) -> Result<Vec<(String, Tensor)>> {
    let (h, i) = (preset.hidden, preset.inter);
    let [w1, w3, w2] = [(0u64, i, h), (1, i, h), (2, h, i)].map(|(k, rows, cols)| {
        let a = (3.0 / cols as f32).sqrt();
        SplitMix64::new(stream_seed(seed, 1 + k, e as u64)).fill(rows * cols, a)
    });
    let float = |dtype: DType| -> Result<Vec<(String, Tensor)>> {
        [(Proj::W1, &w1, i, h), (Proj::W3, &w3, i, h), (Proj::W2, &w2, h, i)]
            .into_iter()
            .map(|(proj, w, rows, cols)| {
                Ok((
                    expert_tensor_name(e, proj, "weight"),
                    Tensor::from_f32_as(dtype, vec![rows, cols], w)?,
                ))
            })
            .collect()
    };
    Ok(match preset.weights {
        WeightFormat::F32 => float(DType::F32)?,
        WeightFormat::Bf16 => float(DType::BF16)?,
        quantized => {
            let m = moe_quant::quantize::ExpertMatrices {
                w1: &w1,
                w3: Some(&w3),
                w2: &w2,
                hidden: h,
                intermediate: i,
            };
            moe_quant::quantize::quantize_expert(&quantized.quant(), e, &m, [BENCH_INPUT_AMAX; 2])?
        }
    })
}

fn st_dtype(d: DType) -> Result<safetensors::Dtype> {
    Ok(match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        DType::U8 => safetensors::Dtype::U8,
        DType::I8 => safetensors::Dtype::I8,
        other => {
            return Err(BenchError::Safetensors(format!(
                "the bench cache does not store {other} tensors"
            )));
        }
    })
}

/// Writes `tensors` as one safetensors file.
fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.view()?)))
        .collect::<Result<_>>()?;
    let mut st = Vec::with_capacity(views.len());
    for (name, v) in &views {
        let view = safetensors::tensor::TensorView::new(st_dtype(v.dtype)?, v.shape.clone(), &v.data)
            .map_err(|e| BenchError::Safetensors(format!("tensor `{name}`: {e}")))?;
        st.push((name.as_str(), view));
    }
    safetensors::serialize_to_file(st, None, path)
        .map_err(|e| BenchError::Safetensors(format!("writing `{}`: {e}", path.display())))
}

/// Generates every expert into shards of whole experts (in parallel, one shard per worker
/// at a time) and writes the shard index; returns the shard file names.
fn write_experts(dir: &Path, preset: &Preset, seed: u64, progress: Progress<'_>) -> Result<Vec<String>> {
    let per_shard = (SHARD_BYTES / preset.expert_bytes().max(1)).max(1) as usize;
    let n_shards = preset.experts.div_ceil(per_shard);
    let names: Vec<String> = (0..n_shards).map(|s| format!("experts-{s:05}.safetensors")).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let weight_map = Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(n_shards);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let shard = next.fetch_add(1, Ordering::Relaxed);
                        if shard >= n_shards {
                            return Ok(());
                        }
                        let experts = shard * per_shard..((shard + 1) * per_shard).min(preset.experts);
                        let mut tensors = Vec::new();
                        for e in experts {
                            tensors.extend(
                                expert_tensors(preset, seed, e).with_context(|| format!("generating expert {e}"))?,
                            );
                            progress(done.fetch_add(1, Ordering::Relaxed) + 1, preset.experts);
                        }
                        write_file(&dir.join(&names[shard]), &tensors)?;
                        let mut map = weight_map.lock().unwrap_or_else(|p| p.into_inner());
                        for (n, _) in &tensors {
                            map.insert(n.clone(), names[shard].clone());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| BenchError::WorkerPanicked)??;
        }
        Ok(())
    })?;
    let map = weight_map.into_inner().unwrap_or_else(|p| p.into_inner());
    let index = serde_json::json!({ "metadata": { "generator": "moe bench" }, "weight_map": map });
    std::fs::write(dir.join(INDEX_FILE), serde_json::to_string_pretty(&index)?)
        .with_context(|| format!("writing the shard index in `{}`", dir.display()))?;
    Ok(names)
}

/// Writes `rows` rows of `x` and `logits`; row `r` is the same whatever `rows` is.
fn write_inputs(dir: &Path, preset: &Preset, seed: u64, rows: usize) -> Result<()> {
    let (x, logits) = inputs(preset, seed, rows)?;
    let tensors = vec![("logits".to_string(), logits), ("x".to_string(), x)];
    write_file(&dir.join(INPUTS_FILE), &tensors)
}

/// The first `rows` rows of `x` (bf16 `[rows, H]`) and of the router logits (f32 `[rows, E]`),
/// both N(0, 1): what the cache's inputs file holds, generated in memory (`--backend cuda`
/// uses them without a cache). Row `r` is the same whatever `rows` is.
pub fn inputs(preset: &Preset, seed: u64, rows: usize) -> Result<(Tensor, Tensor)> {
    let (mut x, mut logits) = (
        Vec::with_capacity(rows * preset.hidden),
        Vec::with_capacity(rows * preset.experts),
    );
    for r in 0..rows as u64 {
        x.extend(normals(&mut SplitMix64::new(stream_seed(seed, 100, r)), preset.hidden));
        logits.extend(normals(&mut SplitMix64::new(stream_seed(seed, 101, r)), preset.experts));
    }
    Ok((
        Tensor::from_f32_as(DType::BF16, vec![rows, preset.hidden], &x)?,
        Tensor::from_f32(vec![rows, preset.experts], logits)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_variance() {
        let v = normals(&mut SplitMix64::new(3), 20001);
        assert_eq!(v.len(), 20001);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }

    #[test]
    fn tiny_cache_round_trips_and_is_reused() {
        let root = std::env::temp_dir().join(format!("moe-bench-cache-test-{}", std::process::id()));
        let preset = Preset::find("tiny").unwrap();
        let cache = ensure(&root, &preset, 7, 4, &|_, _| {}).unwrap();
        let w = cache.weights().unwrap();
        let t = w.get("3.w2.weight").unwrap().unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::BF16, vec![64, 32]));
        let (x, l) = cache.inputs(4).unwrap();
        assert_eq!((x.shape(), l.shape()), (&[4, 64][..], &[4, 8][..]));
        // More rows keep the first ones; the weights are not regenerated (same mtime).
        let shard = cache.dir.join(&cache.meta.shards[0]);
        let before = std::fs::metadata(&shard).unwrap().modified().unwrap();
        let again = ensure(&root, &preset, 7, 6, &|_, _| {}).unwrap();
        assert_eq!(std::fs::metadata(&shard).unwrap().modified().unwrap(), before);
        let (x6, _) = again.inputs(6).unwrap();
        assert_eq!(
            x6.narrow_rows(0, 4).unwrap().to_f32_vec("x").unwrap(),
            x.to_f32_vec("x").unwrap()
        );
        // FP8 block weights carry their block scales.
        let fp8 = ensure(&root, &preset.with_weights(WeightFormat::Fp8Block), 7, 1, &|_, _| {}).unwrap();
        let fw = fp8.weights().unwrap();
        assert_eq!(fw.get("0.w1.weight").unwrap().unwrap().dtype, DType::F8E4M3);
        assert_eq!(fw.get("0.w1.weight_scale_inv").unwrap().unwrap().shape, vec![1, 1]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
