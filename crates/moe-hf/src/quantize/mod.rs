//! Writing a quantized checkpoint from a float one (the library half of `moe quantize`).
//!
//! The routed experts of every MoE layer are quantized one projection at a time and written in
//! the target format's real on-disk layout; every other tensor (attention, norms, embeddings,
//! router, shared experts) is copied byte for byte. `config.json` gets the format's
//! `quantization_config`, so the output loads with [`crate::MoeBlock::load`] (and, for the
//! real layouts, with the tools that defined them):
//!
//! | format | experts on disk | `quantization_config` |
//! |---|---|---|
//! | `fp8-block` | per expert `…{gate,up,down}_proj.weight` f8e4m3 + `.weight_scale_inv` f32 per 128×128 block (DeepSeek-V3) | `{quant_method: fp8, fmt: e4m3, activation_scheme: dynamic, weight_block_size: [128, 128]}` |
//! | `nvfp4` | per expert `.weight` u8 (two e2m1, low nibble first) + `.weight_scale` f8e4m3 per 16 + `.weight_scale_2` f32 + `.input_scale` f32 (ModelOpt) | `{quant_method: modelopt, quant_algo: NVFP4}` + `hf_quant_config.json` |
//! | `mxfp4` | GPT-OSS: `experts.{gate_up,down}_proj_{blocks,scales}` (fused, rows interleaved as in bf16); Llama 4: the same fused tensors with gate/up halves; per-expert families: `.weight` u8 + `.weight_scale` u8 (UE8M0) per 32 | `{quant_method: mxfp4}` |
//!
//! Families whose float experts are fused (GPT-OSS, Llama 4) are written per expert
//! (`experts.{e}.gate_proj/up_proj/down_proj`, biases split per expert alike) for the formats
//! without a fused layout (FP8 block, NVFP4), the way ModelOpt exports Llama 4.
//!
//! Nothing is written until every layer's shapes were checked against the format (an input
//! dimension that is not a multiple of 16 for NVFP4 or 32 for MXFP4 is refused naming the
//! tensor), and the output is read back and validated before returning. Quantized tensors are
//! held in memory only until their shard (at most [`QuantizeOptions::max_shard_bytes`]) is
//! written; copied tensors are streamed from the source's mapping.

use std::collections::BTreeSet;
use std::path::Path;

use moe_core::{DType, MoeError, QuantAlgo, QuantConfig, Result, Tensor, WeightSource};
use safetensors::Dtype;
use serde_json::{Value, json};

use crate::checkpoint::{Checkpoint, INDEX_FILE};
use crate::config::HfConfig;
use crate::expert_source::ExpertSource;
use crate::names::{BlockNames, ExpertLayout};
use crate::quant_format::CheckpointQuant;
use moe_quant::quantize::{self as q, Quantized};

mod shards;
use shards::{Data, Entry, ShardWriter, write_json};

/// Default largest shard (bytes), as `save_pretrained`'s default `max_shard_size` order.
pub const DEFAULT_SHARD_BYTES: usize = 4 << 30;

/// A format `moe quantize` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetFormat {
    Fp8Block,
    Nvfp4,
    Mxfp4,
}

impl TargetFormat {
    /// Every format `moe quantize` writes: those whose descriptor has a `quantize_name`, in
    /// `FORMATS` order (test `target_formats_are_the_descriptors_with_a_quantize_name`).
    pub const ALL: [TargetFormat; 3] = [TargetFormat::Fp8Block, TargetFormat::Nvfp4, TargetFormat::Mxfp4];

    /// The quantization algorithm written (what the writing code below `match`es on is the
    /// layout; the names come from the algorithm's descriptor).
    pub fn algo(self) -> QuantAlgo {
        match self {
            TargetFormat::Fp8Block => QuantAlgo::Fp8Block,
            TargetFormat::Nvfp4 => QuantAlgo::Nvfp4,
            TargetFormat::Mxfp4 => QuantAlgo::W4A16Mxfp4,
        }
    }

    /// The CLI spelling: the descriptor's `quantize_name`.
    pub fn name(self) -> &'static str {
        let d = self.algo().descriptor();
        d.quantize_name.unwrap_or(d.name)
    }

    /// One line for help texts: the descriptor's `summary`.
    pub fn summary(self) -> &'static str {
        self.algo().descriptor().summary
    }

    /// The format whose CLI spelling is `s`.
    pub fn parse(s: &str) -> Result<TargetFormat> {
        TargetFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = TargetFormat::ALL.iter().map(|f| f.name()).collect();
            MoeError::config(
                "format",
                format!("unknown quantized format `{s}` ({})", names.join(", ")),
            )
        })
    }

    /// How the written checkpoint stores its experts (the format's defaults).
    pub fn checkpoint_quant(self) -> CheckpointQuant {
        CheckpointQuant::canonical(&QuantConfig {
            algo: self.algo(),
            ..QuantConfig::default()
        })
    }
}

impl std::fmt::Display for TargetFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub format: TargetFormat,
    /// Largest shard in bytes; one shard is written as `model.safetensors`, several as
    /// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
    pub max_shard_bytes: usize,
    /// Calibration activations `[T, H]` (the MoE block's input) for the NVFP4 `input_scale`s
    /// (activation amax / (448·6)): FC1's from their amax, FC2's from the amax of each
    /// expert's activation output on all of them (an upper bound of the routed tokens' amax,
    /// which is the safe side: an underestimate clips, an overestimate only shifts the e4m3
    /// block scales down their 17-binade range). Without calibration both amaxima are
    /// [`UNCALIBRATED_INPUT_AMAX`].
    pub calibration: Option<Tensor>,
}

/// Activation amax assumed without calibration: 448·6, i.e. `input_scale = 1.0`.
pub const UNCALIBRATED_INPUT_AMAX: f32 = 448.0 * 6.0;

impl QuantizeOptions {
    pub fn new(format: TargetFormat) -> QuantizeOptions {
        QuantizeOptions {
            format,
            max_shard_bytes: DEFAULT_SHARD_BYTES,
            calibration: None,
        }
    }
}

/// Progress of a run: `done` of `total` expert projections quantized.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeProgress<'a> {
    pub done: usize,
    pub total: usize,
    /// The projection just quantized (real name of its weight).
    pub tensor: &'a str,
}

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct QuantizeSummary {
    pub format: &'static str,
    pub family: String,
    /// MoE layers whose experts were quantized.
    pub layers: Vec<usize>,
    /// How the experts are laid out in the output (`per-expert` or `fused-blocks`).
    pub layout: &'static str,
    /// Bytes of the routed-expert tensors in the source / output checkpoints.
    pub expert_bytes_in: usize,
    pub expert_bytes_out: usize,
    /// Tensors copied unchanged.
    pub copied_tensors: usize,
    /// Shard files written (relative to the output directory).
    pub files: Vec<String>,
}

/// How one layer's quantized experts are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutLayout {
    PerExpert {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// GPT-OSS-style `_blocks`/`_scales` with gate/up rows interleaved (or in halves).
    FusedBlocks { interleaved: bool },
}

impl OutLayout {
    fn name(self) -> &'static str {
        match self {
            OutLayout::PerExpert { .. } => "per-expert",
            OutLayout::FusedBlocks { .. } => "fused-blocks",
        }
    }
}

struct LayerPlan {
    layer: usize,
    names: BlockNames,
    out: OutLayout,
    /// Source tensors replaced by the quantized ones.
    consumed: Vec<String>,
}

/// Quantizes the checkpoint in `src` into the new directory `dst` (created; it must not
/// exist or be empty). `progress` is called after every expert projection.
pub fn quantize_checkpoint(
    src: &Path,
    dst: &Path,
    opts: &QuantizeOptions,
    progress: &mut dyn FnMut(QuantizeProgress<'_>),
) -> Result<QuantizeSummary> {
    let hf = HfConfig::from_dir(src)?;
    if hf.quant.algo != QuantAlgo::None {
        return Err(MoeError::UnsupportedModel {
            detail: format!(
                "`{}` is already quantized ({}); `moe quantize` reads bf16/f16/f32 checkpoints",
                src.display(),
                hf.quant.algo.as_str()
            ),
        });
    }
    let ckpt = Checkpoint::open(src)?;
    let plans = plan(&hf, &ckpt, opts.format)?;
    prepare_output_dir(dst)?;
    let mut writer = ShardWriter::new(dst, opts.max_shard_bytes);
    let result = match write_all(&hf, &ckpt, &plans, opts, &mut writer, progress) {
        Ok(copied) => {
            let files = writer.finish(&ckpt)?;
            write_configs(src, dst, &ckpt, &plans, opts.format)?;
            let (bytes_in, bytes_out) = verify(&hf, &ckpt, &plans, dst, opts.format)?;
            Ok(QuantizeSummary {
                format: opts.format.name(),
                family: hf.family.name().to_string(),
                layers: plans.iter().map(|p| p.layer).collect(),
                layout: plans.first().map_or("per-expert", |p| p.out.name()),
                expert_bytes_in: bytes_in,
                expert_bytes_out: bytes_out,
                copied_tensors: copied,
                files,
            })
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    };
    if result.is_err() {
        // A half-written checkpoint must not look loadable. The directory was empty (or new)
        // when this run started, so everything in it is this run's.
        if let Ok(entries) = std::fs::read_dir(dst) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    result
}

/// Resolves every MoE layer and checks every expert shape against `format`.
fn plan(hf: &HfConfig, ckpt: &Checkpoint, format: TargetFormat) -> Result<Vec<LayerPlan>> {
    let (e_n, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);
    let target = format.checkpoint_quant();
    let mut plans = Vec::new();
    for layer in hf.moe_layers() {
        let names = BlockNames::resolve(hf.family, layer, ckpt)?;
        let experts = ExpertSource::new(ckpt, &names, e_n, h, i);
        experts.check_complete(hf.expert_bias)?;
        for (canon, out, inp) in [("0.w1.weight", i, h), ("0.w2.weight", h, i)] {
            let real = experts.real_name(canon).unwrap_or_else(|| canon.to_string());
            target.canonical_tensors(out, inp).map_err(|detail| {
                MoeError::shape(
                    &real,
                    format!("a shape {} can hold ({detail})", format.name()),
                    &[out, inp],
                )
            })?;
        }
        let p = &names.prefix;
        let (out, consumed) = match names.experts {
            ExpertLayout::PerExpert { gate, up, down } => {
                let consumed = (0..e_n)
                    .flat_map(|e| [gate, up, down].map(|proj| format!("{p}experts.{e}.{proj}.weight")))
                    .collect();
                (OutLayout::PerExpert { gate, up, down }, consumed)
            }
            fused @ (ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves) => {
                let mut consumed = vec![format!("{p}experts.gate_up_proj"), format!("{p}experts.down_proj")];
                let out = if format == TargetFormat::Mxfp4 {
                    OutLayout::FusedBlocks {
                        interleaved: fused == ExpertLayout::FusedInterleaved,
                    }
                } else {
                    // Biases follow their weights into per-expert tensors.
                    if hf.expert_bias {
                        consumed.extend([
                            format!("{p}experts.gate_up_proj_bias"),
                            format!("{p}experts.down_proj_bias"),
                        ]);
                    }
                    OutLayout::PerExpert {
                        gate: "gate_proj",
                        up: "up_proj",
                        down: "down_proj",
                    }
                };
                (out, consumed)
            }
        };
        plans.push(LayerPlan {
            layer,
            names,
            out,
            consumed,
        });
    }
    if plans.is_empty() {
        return Err(MoeError::UnsupportedModel {
            detail: format!("the {} model has no MoE layer", hf.model_type),
        });
    }
    Ok(plans)
}

fn prepare_output_dir(dst: &Path) -> Result<()> {
    let io = |source| MoeError::Io {
        path: dst.display().to_string(),
        source,
    };
    if dst.exists() {
        let mut entries = std::fs::read_dir(dst).map_err(io)?;
        if entries.next().is_some() {
            return Err(MoeError::Io {
                path: dst.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the output directory is not empty (refusing to mix two checkpoints)",
                ),
            });
        }
        return Ok(());
    }
    std::fs::create_dir_all(dst).map_err(io)
}

/// Writes every tensor; returns how many were copied unchanged.
fn write_all(
    hf: &HfConfig,
    ckpt: &Checkpoint,
    plans: &[LayerPlan],
    opts: &QuantizeOptions,
    writer: &mut ShardWriter,
    progress: &mut dyn FnMut(QuantizeProgress<'_>),
) -> Result<usize> {
    let consumed: BTreeSet<&str> = plans
        .iter()
        .flat_map(|p| p.consumed.iter().map(String::as_str))
        .collect();
    let mut copied = 0;
    for name in ckpt.names() {
        if !consumed.contains(name) {
            let (dtype, shape, data) = ckpt.raw(name)?;
            writer.push(
                ckpt,
                Entry {
                    name: name.to_string(),
                    dtype,
                    shape: shape.to_vec(),
                    data: Data::Copied(data.len()),
                },
            )?;
            copied += 1;
        }
    }
    let (e_n, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);
    let calibration = match &opts.calibration {
        Some(x) if x.shape().len() != 2 || x.shape()[1] != h => {
            return Err(MoeError::shape(
                "calibration activations",
                format!("[T, {h}]"),
                x.shape(),
            ));
        }
        Some(x) => Some(x.to_dtype(DType::F32)?),
        None => None,
    };
    let x_amax = match &calibration {
        Some(x) => q::amax(x.as_f32("calibration activations")?),
        None => UNCALIBRATED_INPUT_AMAX,
    };
    let opts = &QuantizeOptions {
        calibration,
        ..opts.clone()
    };
    let total = plans.len() * e_n * 3;
    let mut done = 0;
    for plan in plans {
        let experts = ExpertSource::new(ckpt, &plan.names, e_n, h, i);
        let p = &plan.names.prefix;
        let mut fused = FusedBlocks::new(e_n, h, i);
        for e in 0..e_n {
            let weight = |w: &str| -> Result<Vec<f32>> {
                let name = format!("{e}.{w}.weight");
                let real = experts.real_name(&name).unwrap_or(name.clone());
                let v = experts
                    .get(&name)?
                    .ok_or_else(|| MoeError::MissingTensor { name: real.clone() })?;
                let v = v.to_f32_vec(&real)?;
                // The codecs encode NaN/inf as NaN/saturated codes; a broken float checkpoint
                // must not turn into a quantized one that looks fine.
                if let Some(k) = v.iter().position(|x| !x.is_finite()) {
                    return Err(MoeError::NonFinite {
                        what: real,
                        location: format!("element {k}"),
                    });
                }
                Ok(v)
            };
            let (gate, up, down) = (weight("w1")?, weight("w3")?, weight("w2")?);
            let input_amax = match (&opts.calibration, opts.format) {
                (Some(x), TargetFormat::Nvfp4) => {
                    let bias = if hf.expert_bias {
                        let b = |w: &str| -> Result<Vec<f32>> {
                            let name = format!("{e}.{w}.bias");
                            let v = experts.get(&name)?.ok_or_else(|| MoeError::MissingTensor {
                                name: experts.real_name(&name).unwrap_or(name.clone()),
                            })?;
                            v.to_f32_vec(&name)
                        };
                        Some((b("w1")?, b("w3")?))
                    } else {
                        None
                    };
                    [x_amax, fc2_input_amax(hf, x, &gate, &up, bias, i)?]
                }
                _ => [UNCALIBRATED_INPUT_AMAX; 2],
            };
            let mut quantized = quantize_expert(opts.format, [&gate, &up, &down], h, i, input_amax)?;
            for (w, tensors) in quantized.drain(..) {
                match plan.out {
                    OutLayout::PerExpert { gate, up, down } => {
                        let proj = match w {
                            "w1" => gate,
                            "w3" => up,
                            _ => down,
                        };
                        for (suffix, t) in tensors {
                            writer.push_tensor(ckpt, format!("{p}experts.{e}.{proj}.{suffix}"), &t)?;
                        }
                        if hf.expert_bias && consumed.contains(format!("{p}experts.gate_up_proj_bias").as_str()) {
                            let b = experts
                                .get(&format!("{e}.{w}.bias"))?
                                .ok_or_else(|| MoeError::MissingTensor {
                                    name: format!(
                                        "{p}experts.{}_bias",
                                        if w == "w2" { "down_proj" } else { "gate_up_proj" }
                                    ),
                                })?;
                            let t = b.to_tensor(&format!("{p}experts.{e}.{proj}.bias"))?;
                            writer.push_tensor(ckpt, format!("{p}experts.{e}.{proj}.bias"), &t)?;
                        }
                    }
                    OutLayout::FusedBlocks { interleaved } => fused.put(e, w, &tensors, interleaved)?,
                }
                done += 1;
                let real = experts.real_name(&format!("{e}.{w}.weight")).unwrap_or_default();
                progress(QuantizeProgress {
                    done,
                    total,
                    tensor: &format!("{real} (expert {e})"),
                });
            }
        }
        if let OutLayout::FusedBlocks { .. } = plan.out {
            for (name, dtype, shape, data) in fused.into_entries(p) {
                writer.push(
                    ckpt,
                    Entry {
                        name,
                        dtype,
                        shape,
                        data: Data::Owned(data),
                    },
                )?;
            }
        }
    }
    Ok(copied)
}

/// Quantizes one expert's projections: `[("w1", ..), ("w3", ..), ("w2", ..)]`.
/// `input_amax` are the activation amaxima of FC1's and FC2's inputs (NVFP4 only).
fn quantize_expert(
    format: TargetFormat,
    [gate, up, down]: [&[f32]; 3],
    h: usize,
    i: usize,
    input_amax: [f32; 2],
) -> Result<Vec<(&'static str, Quantized)>> {
    Ok(match format {
        TargetFormat::Fp8Block => {
            let b = [128, 128];
            vec![
                ("w1", q::fp8_block(gate, i, h, b)?),
                ("w3", q::fp8_block(up, i, h, b)?),
                ("w2", q::fp8_block(down, h, i, b)?),
            ]
        }
        TargetFormat::Nvfp4 => {
            // NVFP4 kernels run FC1 as one GEMM over [w3; w1] with one global scale per
            // expert (TensorRT-LLM takes the larger `weight_scale_2` without renormalizing the
            // block scales), so gate and up are quantized against their common amax.
            let fc1 = q::amax(gate).max(q::amax(up));
            vec![
                ("w1", q::nvfp4(gate, i, h, Some(fc1), input_amax[0])?),
                ("w3", q::nvfp4(up, i, h, Some(fc1), input_amax[0])?),
                ("w2", q::nvfp4(down, h, i, None, input_amax[1])?),
            ]
        }
        TargetFormat::Mxfp4 => vec![
            ("w1", q::mxfp4(gate, i, h)?),
            ("w3", q::mxfp4(up, i, h)?),
            ("w2", q::mxfp4(down, h, i)?),
        ],
    })
}

/// Activation amax of FC2's input (the expert's activation output) over the calibration
/// rows `x` `[T, H]`, for one expert with float weights `gate`/`up` `[I, H]` (+ biases).
fn fc2_input_amax(
    hf: &HfConfig,
    x: &Tensor,
    gate: &[f32],
    up: &[f32],
    bias: Option<(Vec<f32>, Vec<f32>)>,
    i: usize,
) -> Result<f32> {
    let h = hf.hidden_size;
    let w = |v: &[f32]| Tensor::from_f32(vec![i, h], v.to_vec());
    let b = match &bias {
        Some((bg, bu)) => (
            Some(Tensor::from_f32(vec![i], bg.clone())?),
            Some(Tensor::from_f32(vec![i], bu.clone())?),
        ),
        None => (None, None),
    };
    let g = moe::ops::linear(x, &w(gate)?, b.0.as_ref())?.to_f32_vec("calibration gate")?;
    let u = moe::ops::linear(x, &w(up)?, b.1.as_ref())?.to_f32_vec("calibration up")?;
    let act = |g: f32, u: f32| match hf.activation {
        moe_core::Activation::SwigluGptOss { alpha, beta, limit } => {
            let (g, u) = (g.min(limit), u.clamp(-limit, limit));
            (u + beta) * g / (1.0 + (-alpha * g).exp())
        }
        _ => g / (1.0 + (-g).exp()) * u,
    };
    Ok(g.iter()
        .zip(&u)
        .map(|(&g, &u)| act(g, u))
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs())))
}

/// The four fused MXFP4 tensors of one layer, filled expert by expert.
struct FusedBlocks {
    e_n: usize,
    h: usize,
    i: usize,
    gate_up_blocks: Vec<u8>,
    gate_up_scales: Vec<u8>,
    down_blocks: Vec<u8>,
    down_scales: Vec<u8>,
}

impl FusedBlocks {
    fn new(e_n: usize, h: usize, i: usize) -> FusedBlocks {
        FusedBlocks {
            e_n,
            h,
            i,
            gate_up_blocks: Vec::new(),
            gate_up_scales: Vec::new(),
            down_blocks: Vec::new(),
            down_scales: Vec::new(),
        }
    }

    /// Places expert `e`'s projection `w` (canonical MXFP4 `weight` `[out, in/2]`, `weight_scale`
    /// `[out, in/32]`) at its rows of the fused tensors.
    fn put(&mut self, e: usize, w: &str, tensors: &Quantized, interleaved: bool) -> Result<()> {
        let (h, i) = (self.h, self.i);
        if self.gate_up_blocks.is_empty() {
            self.gate_up_blocks = vec![0; self.e_n * 2 * i * h / 2];
            self.gate_up_scales = vec![0; self.e_n * 2 * i * h / 32];
            self.down_blocks = vec![0; self.e_n * h * i / 2];
            self.down_scales = vec![0; self.e_n * h * i / 32];
        }
        let get = |s: &str| -> Result<&[u8]> {
            tensors
                .iter()
                .find(|(x, _)| *x == s)
                .ok_or_else(|| MoeError::MissingTensor {
                    name: format!("quantized {e}.{w}.{s}"),
                })?
                .1
                .as_bytes(s)
        };
        let (blocks, scales) = (get("weight")?, get("weight_scale")?);
        let (out, inp) = if w == "w2" { (h, i) } else { (i, h) };
        if blocks.len() != out * inp / 2 || scales.len() != out * inp / 32 {
            return Err(MoeError::shape(
                format!("quantized {e}.{w} (weight, weight_scale)"),
                format!("{} and {} bytes", out * inp / 2, out * inp / 32),
                &[blocks.len(), scales.len()],
            ));
        }
        if w == "w2" {
            let (nb, ns) = (h * i / 2, h * i / 32);
            self.down_blocks[e * nb..(e + 1) * nb].copy_from_slice(blocks);
            self.down_scales[e * ns..(e + 1) * ns].copy_from_slice(scales);
            return Ok(());
        }
        let (rb, rs) = (h / 2, h / 32);
        for c in 0..i {
            let row = match (interleaved, w) {
                (true, "w1") => 2 * c,
                (true, _) => 2 * c + 1,
                (false, "w1") => c,
                (false, _) => i + c,
            };
            let (db, ds) = ((e * 2 * i + row) * rb, (e * 2 * i + row) * rs);
            self.gate_up_blocks[db..db + rb].copy_from_slice(&blocks[c * rb..(c + 1) * rb]);
            self.gate_up_scales[ds..ds + rs].copy_from_slice(&scales[c * rs..(c + 1) * rs]);
        }
        Ok(())
    }

    fn into_entries(self, prefix: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let (e_n, h, i) = (self.e_n, self.h, self.i);
        vec![
            (
                format!("{prefix}experts.gate_up_proj_blocks"),
                Dtype::U8,
                vec![e_n, 2 * i, h / 32, 16],
                self.gate_up_blocks,
            ),
            (
                format!("{prefix}experts.gate_up_proj_scales"),
                Dtype::U8,
                vec![e_n, 2 * i, h / 32],
                self.gate_up_scales,
            ),
            (
                format!("{prefix}experts.down_proj_blocks"),
                Dtype::U8,
                vec![e_n, h, i / 32, 16],
                self.down_blocks,
            ),
            (
                format!("{prefix}experts.down_proj_scales"),
                Dtype::U8,
                vec![e_n, h, i / 32],
                self.down_scales,
            ),
        ]
    }
}

/// `config.json` with the format's `quantization_config` (plus ModelOpt's
/// `hf_quant_config.json` for NVFP4), and the source's other small files (generation config,
/// tokenizer) copied.
fn write_configs(src: &Path, dst: &Path, ckpt: &Checkpoint, plans: &[LayerPlan], format: TargetFormat) -> Result<()> {
    let path = src.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| MoeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut config: Value = serde_json::from_str(&text).map_err(|e| MoeError::BadCheckpoint {
        path: path.display().to_string(),
        detail: format!("invalid JSON: {e}"),
    })?;
    // Linear layers left in float: every 2-D float `.weight` that is not a routed expert's,
    // so loaders that quantize every Linear by default (transformers) leave them alone.
    let consumed: BTreeSet<&str> = plans
        .iter()
        .flat_map(|p| p.consumed.iter().map(String::as_str))
        .collect();
    let float_modules: Vec<String> = ckpt
        .names()
        .filter(|n| !consumed.contains(n))
        .filter_map(|n| {
            let (dtype, shape) = ckpt.info(n)?;
            (shape.len() == 2 && dtype.is_float_activation()).then(|| n.strip_suffix(".weight").map(str::to_string))?
        })
        .collect();
    let q = match format {
        TargetFormat::Fp8Block => json!({
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
            "modules_to_not_convert": float_modules,
        }),
        TargetFormat::Nvfp4 => json!({
            "quant_method": "modelopt",
            "quant_algo": "NVFP4",
            "group_size": 16,
            "kv_cache_quant_algo": null,
            "exclude_modules": float_modules,
        }),
        TargetFormat::Mxfp4 => json!({
            "quant_method": "mxfp4",
            "modules_to_not_convert": float_modules,
        }),
    };
    let obj = config.as_object_mut().ok_or_else(|| MoeError::BadCheckpoint {
        path: path.display().to_string(),
        detail: "config.json is not a JSON object".into(),
    })?;
    // Multimodal Llama 4 keeps the text model's keys (and its quantization) at the top level.
    obj.insert("quantization_config".into(), q.clone());
    write_json(&dst.join("config.json"), &config)?;
    if format == TargetFormat::Nvfp4 {
        let modelopt = json!({
            "producer": { "name": "moe quantize", "version": env!("CARGO_PKG_VERSION") },
            "quantization": { "quant_algo": "NVFP4", "kv_cache_quant_algo": null, "group_size": 16, "exclude_modules": q["exclude_modules"] },
        });
        write_json(&dst.join("hf_quant_config.json"), &modelopt)?;
    }
    let entries = std::fs::read_dir(src).map_err(|source| MoeError::Io {
        path: src.display().to_string(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name.ends_with(".safetensors")
            || [INDEX_FILE, "config.json", "hf_quant_config.json"].contains(&name.as_str())
            || !entry.path().is_file();
        if !skip {
            std::fs::copy(entry.path(), dst.join(&name)).map_err(|source| MoeError::Io {
                path: entry.path().display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Reads the output back: its config declares the format and every layer's experts pass the
/// loader's completeness check. Returns the expert bytes of source and output.
fn verify(
    hf: &HfConfig,
    ckpt: &Checkpoint,
    plans: &[LayerPlan],
    dst: &Path,
    format: TargetFormat,
) -> Result<(usize, usize)> {
    let out_hf = HfConfig::from_dir(dst)?;
    let quant = out_hf.checkpoint_quant()?;
    if quant != format.checkpoint_quant() {
        return Err(MoeError::BadCheckpoint {
            path: dst.display().to_string(),
            detail: format!(
                "written config declares {} experts, expected {}",
                quant.name(),
                format.name()
            ),
        });
    }
    let out = Checkpoint::open(dst)?;
    let (e_n, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);
    let (mut bytes_in, mut bytes_out) = (0, 0);
    for plan in plans {
        bytes_in += ExpertSource::new(ckpt, &plan.names, e_n, h, i).disk_bytes();
        let names = BlockNames::resolve(out_hf.family, plan.layer, &out)?;
        let experts = ExpertSource::new(&out, &names, e_n, h, i).with_quant(quant);
        experts.check_complete(hf.expert_bias)?;
        bytes_out += experts.disk_bytes();
    }
    Ok((bytes_in, bytes_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::FORMATS;

    #[test]
    fn target_formats_are_the_descriptors_with_a_quantize_name() {
        let named: Vec<QuantAlgo> = FORMATS
            .iter()
            .filter(|d| d.quantize_name.is_some())
            .map(|d| d.algo)
            .collect();
        let targets: Vec<QuantAlgo> = TargetFormat::ALL.iter().map(|f| f.algo()).collect();
        assert_eq!(targets, named);
        for f in TargetFormat::ALL {
            assert_eq!(TargetFormat::parse(f.name()).unwrap(), f);
            assert_eq!(f.checkpoint_quant().algo(), f.algo());
        }
        assert_eq!(
            TargetFormat::Fp8Block.checkpoint_quant(),
            CheckpointQuant::Fp8Block { block: [128, 128] }
        );
        assert!(TargetFormat::parse("int8").is_err());
    }
}
