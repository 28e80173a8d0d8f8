//! [`MoeBlock`]: the whole Hugging Face MoE block of one layer — router gate, routed experts
//! (a [`moe::ConfigurableMoe`] fed through [`ExpertSource`]) and shared experts — with the
//! output `routed + shared`, as the family's transformers module computes it.
//!
//! Loading is all-or-nothing: every tensor is read and checked before the block is returned.
//! Quantized checkpoints (`quantization_config`) load their routed experts in the declared
//! format through the quant method `moe-quant` selects; model-side weights that are quantized
//! too (DeepSeek FP8 shared experts) are dequantized once at load.

use std::path::Path;
use std::sync::Arc;

use moe::{ConfigurableMoe, CreateOptions, ForwardOptions, LayerParts};
use moe_core::{
    DType, EplbConfig, MoeConfig, MoeError, ParallelConfig, ProcessGroup, ResolutionReport, Result, RoutingMethod,
    Tensor,
};

use crate::checkpoint::Checkpoint;
use crate::config::{Family, HfConfig};
use crate::expert_source::ExpertSource;
use crate::names::BlockNames;
use crate::numerics::round_to;
use crate::quant_format::CheckpointQuant;
use crate::router::Router;
use crate::shared_expert::SharedExpert;

/// How to build a block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockOptions {
    /// Backend family (`reference`, `cpu`, ...); `None` = automatic selection.
    pub backend: Option<String>,
    /// Largest number of tokens one chunk of the routed layer holds (`None` = unchunked).
    pub max_tokens_per_chunk: Option<usize>,
    /// Run in this dtype instead of the checkpoint's (weights are converted at load).
    pub dtype: Option<DType>,
    /// Decode quantized experts to float at load and run them unquantized (as transformers'
    /// `dequantize=True`): a reference for the quantized path, or a way to run a format no
    /// backend implements, at the float model's memory cost.
    pub dequantize: bool,
}

/// One rank's share of a block spread over several ranks: experts partitioned over the
/// ranks of `group` (EP = group size), every rank bringing its own tokens (attention-DP).
/// The router and shared experts are dense and run on each rank's own rows.
#[derive(Clone)]
pub struct Distributed {
    pub group: Arc<dyn ProcessGroup>,
    /// Communication strategy: `auto` or one of `moe::COMM_NAMES`.
    pub comm: String,
    /// Expert-parallel load balancing of the routed layer.
    pub eplb: Option<EplbConfig>,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("rank", &self.group.rank())
            .field("size", &self.group.size())
            .field("comm", &self.comm)
            .field("eplb", &self.eplb)
            .finish()
    }
}

/// One layer's MoE block, loaded and ready to run.
pub struct MoeBlock {
    hf: HfConfig,
    layer: usize,
    dtype: DType,
    names: BlockNames,
    router: Router,
    moe: ConfigurableMoe,
    shared: Option<SharedExpert>,
    /// Format of the routed experts on disk.
    quant: CheckpointQuant,
    /// Bytes of the routed-expert tensors in the checkpoint.
    expert_disk_bytes: usize,
    /// One rank of a block spread over several ranks (zero-row calls still run).
    distributed: bool,
}

impl std::fmt::Debug for MoeBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoeBlock")
            .field("family", &self.hf.family)
            .field("layer", &self.layer)
            .field("dtype", &self.dtype)
            .field("prefix", &self.names.prefix)
            .field("backend", &self.moe.backend_name())
            .field("quant", &self.quant)
            .finish()
    }
}

impl MoeBlock {
    /// Loads layer `layer` of the checkpoint in `dir` (`config.json` + safetensors).
    pub fn load(dir: impl AsRef<Path>, layer: usize, opts: BlockOptions) -> Result<MoeBlock> {
        MoeBlock::load_distributed(dir, layer, opts, None)
    }

    /// [`MoeBlock::load`] for one rank of a block spread over `dist`'s group.
    pub fn load_distributed(
        dir: impl AsRef<Path>,
        layer: usize,
        opts: BlockOptions,
        dist: Option<Distributed>,
    ) -> Result<MoeBlock> {
        let dir = dir.as_ref();
        // Config first: an unsupported family or dense layer is reported before any file is mapped.
        let hf = HfConfig::from_dir(dir)?;
        hf.check_layer(layer)?;
        let ckpt = Checkpoint::open(dir)?;
        MoeBlock::from_checkpoint_distributed(hf, &ckpt, layer, opts, dist)
    }

    /// Builds the block of `layer` from a parsed config and an open checkpoint.
    pub fn from_checkpoint(hf: HfConfig, ckpt: &Checkpoint, layer: usize, opts: BlockOptions) -> Result<MoeBlock> {
        MoeBlock::from_checkpoint_distributed(hf, ckpt, layer, opts, None)
    }

    /// [`MoeBlock::from_checkpoint`] for one rank of a block spread over `dist`'s group.
    pub fn from_checkpoint_distributed(
        hf: HfConfig,
        ckpt: &Checkpoint,
        layer: usize,
        opts: BlockOptions,
        dist: Option<Distributed>,
    ) -> Result<MoeBlock> {
        let dtype = match opts.dtype.or(hf.dtype) {
            Some(d) => d,
            None => infer_dtype(&hf, ckpt, layer)?,
        };
        let quant = hf.checkpoint_quant()?;
        let mut config: MoeConfig = hf.moe_config(layer, Some(dtype))?;
        if opts.dequantize {
            config.quant = moe_core::QuantConfig::default();
        }
        config.backend = opts.backend.clone();
        config.moe_max_num_tokens = opts.max_tokens_per_chunk;
        let names = BlockNames::resolve(hf.family, layer, ckpt)?;
        let (e, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);

        if let (
            RoutingMethod::DeepSeekV3 {
                e_score_correction_bias,
                ..
            },
            Some(bias),
        ) = (&mut config.routing, names.score_correction_bias)
        {
            let name = names.full(bias);
            let view = ckpt.tensor(&name)?;
            view.expect_shape(&name, &[e])?;
            *e_score_correction_bias = Some(view.to_f32_vec(&name)?);
            config.validate()?;
        }

        let router = Router::load(
            ckpt,
            &names.full(names.router_weight),
            names.router_bias.map(|b| names.full(b)).as_deref(),
            e,
            h,
            dtype,
            hf.family == Family::DeepseekV3,
        )?;

        let shared = match (&names.shared, hf.shared_intermediate_size) {
            (Some(sn), Some(si)) => Some(SharedExpert::load(ckpt, &names.prefix, sn, h, si, dtype, quant)?),
            _ => None,
        };

        let src = ExpertSource::new(ckpt, &names, e, h, i)
            .with_cast(Some(dtype))
            .with_quant(quant)
            .with_dequantize(opts.dequantize);
        // Every tensor against the declared format first, so a checkpoint that contradicts
        // its config is refused naming the tensor, before a backend is even built.
        src.check_complete(config.bias)?;
        let expert_disk_bytes = src.disk_bytes();
        let mut create = CreateOptions::default();
        let distributed = dist.is_some();
        if let Some(d) = dist {
            let (rank, size) = (d.group.rank(), d.group.size());
            config.parallel = ParallelConfig {
                ep_size: size,
                ep_rank: rank,
                tp_size: 1,
                tp_rank: 0,
                attention_dp: true,
            };
            config.eplb = d.eplb;
            create.parts = LayerParts {
                group: Some(d.group),
                comm_choice: d.comm,
                ..LayerParts::default()
            };
        }
        let mut moe = moe::create_moe_with(config, create)?;
        moe.load_weights(&src)?;

        Ok(MoeBlock {
            hf,
            layer,
            dtype,
            names,
            router,
            moe,
            shared,
            quant,
            expert_disk_bytes,
            distributed,
        })
    }

    /// Runs the block on `x` `[T, H]`; the output is `[T, H]` in the block dtype. An `x` of
    /// another float dtype is converted first.
    pub fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, false)
    }

    /// [`MoeBlock::forward`] of one rank of a distributed block: `all_rank_num_tokens` are the
    /// rows of every rank (this rank's `x` holds its own); every rank must call it, with zero
    /// rows if it has none, since the routed layer exchanges tokens. `use_dp_padding` pads
    /// every rank to the largest count inside the routed layer.
    pub fn forward_with(
        &mut self,
        x: &Tensor,
        all_rank_num_tokens: Option<&[usize]>,
        use_dp_padding: bool,
    ) -> Result<Tensor> {
        let h = self.hf.hidden_size;
        if x.shape().len() != 2 || x.shape()[1] != h {
            return Err(MoeError::shape("x", format!("[T, {h}]"), x.shape()));
        }
        if !x.dtype().is_float_activation() {
            return Err(MoeError::DTypeMismatch {
                what: "x".into(),
                expected: self.dtype.to_string(),
                actual: x.dtype().to_string(),
            });
        }
        let t = x.rows();
        if t == 0 && !self.distributed {
            return Ok(Tensor::zeros(self.dtype, vec![0, h]));
        }
        let converted;
        let x = if x.dtype() == self.dtype {
            x
        } else {
            converted = x.to_dtype(self.dtype)?;
            &converted
        };

        let logits = self.router.logits(x)?;
        let opts = ForwardOptions {
            all_rank_num_tokens: all_rank_num_tokens.map(<[usize]>::to_vec),
            use_dp_padding,
        };
        let routed = self.moe.forward_with(x, &logits, &opts)?;
        let Some(shared) = &self.shared else {
            return Ok(routed);
        };
        let s = shared.forward(x)?;
        let mut out = routed.to_f32_vec("routed output")?;
        if out.len() != s.len() {
            return Err(MoeError::shape("routed output", format!("[{t}, {h}]"), routed.shape()));
        }
        out.iter_mut().zip(&s).for_each(|(o, &s)| *o += s);
        round_to(self.dtype, &mut out);
        Tensor::from_f32_as(self.dtype, vec![t, h], &out)
    }

    /// Router logits `[T, E]` (f32 values, rounded as the family's reference rounds them).
    pub fn router_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.router.logits(x)
    }

    /// The parsed `config.json`.
    pub fn hf_config(&self) -> &HfConfig {
        &self.hf
    }

    /// The routed layer's configuration.
    pub fn config(&self) -> &MoeConfig {
        self.moe.config()
    }

    /// How the routed layer's backend was chosen.
    /// The routed layer (EPLB reports, migrated slots, communication).
    pub fn routed(&self) -> &ConfigurableMoe {
        &self.moe
    }

    pub fn report(&self) -> &ResolutionReport {
        self.moe.report()
    }

    pub fn backend_name(&self) -> &str {
        self.moe.backend_name()
    }

    pub fn family(&self) -> Family {
        self.hf.family
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn hidden_size(&self) -> usize {
        self.hf.hidden_size
    }

    /// Absolute tensor-name prefix of the block in the checkpoint.
    pub fn prefix(&self) -> &str {
        &self.names.prefix
    }

    /// The routed layer (its backend holds the expert slots).
    pub fn moe(&self) -> &ConfigurableMoe {
        &self.moe
    }

    /// How the routed experts are stored in the checkpoint.
    pub fn checkpoint_quant(&self) -> CheckpointQuant {
        self.quant
    }

    /// Bytes the backend holds for the routed experts: every per-slot tensor (weights, scales,
    /// biases and whatever the quant method derived from them).
    pub fn expert_resident_bytes(&self) -> usize {
        self.moe
            .backend()
            .expert_weights()
            .tensors
            .values()
            .map(|t| t.numel() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Bytes of the routed-expert tensors in the checkpoint (packed codes, scales, biases).
    pub fn expert_disk_bytes(&self) -> usize {
        self.expert_disk_bytes
    }

    /// Intermediate size of the shared expert, if the block has one.
    pub fn shared_intermediate_size(&self) -> Option<usize> {
        self.shared.as_ref().map(SharedExpert::intermediate_size)
    }
}

/// The dtype of the router weight, for configs that declare none.
fn infer_dtype(hf: &HfConfig, ckpt: &Checkpoint, layer: usize) -> Result<DType> {
    let names = BlockNames::resolve(hf.family, layer, ckpt)?;
    let w = names.full(names.router_weight);
    match ckpt.info(&w) {
        Some((d, _)) if d.is_float_activation() => Ok(d),
        _ => Ok(DType::BF16),
    }
}
