//! `config.json` of the supported Hugging Face MoE families -> [`HfConfig`] (the family spec)
//! -> [`MoeConfig`] of one layer.
//!
//! Key spellings differ across transformers versions and publishers (see
//! `docs/CHECKPOINTS.md`); every spelling real checkpoints use is accepted. Which layers
//! are MoE follows each family's own rule (`first_k_dense_replace`, `decoder_sparse_step`,
//! `mlp_only_layers`, `moe_layers` / `interleave_moe_layer_step`), so asking for a dense
//! layer is a typed error instead of a confusing missing-tensor error later.

use std::path::Path;

use moe_core::{
    Activation, DType, FORMATS, FormatDescriptor, MoeConfig, MoeError, QuantAlgo, QuantConfig, Result, RoutingMethod,
    limits,
};
use serde_json::{Map, Value};

use crate::quant_format::CheckpointQuant;

/// A supported model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    DeepseekV3,
    GptOss,
    /// `llama4_text`, and `llama4` (multimodal) whose `text_config` holds the keys.
    Llama4,
}

impl Family {
    /// Every family, in the order the docs list them.
    pub const ALL: [Family; 7] = [
        Family::Mixtral,
        Family::Qwen2Moe,
        Family::Qwen3Moe,
        Family::Olmoe,
        Family::DeepseekV3,
        Family::GptOss,
        Family::Llama4,
    ];

    /// The family of a `model_type`, `None` if unsupported.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Some(match model_type {
            "mixtral" => Family::Mixtral,
            "qwen2_moe" => Family::Qwen2Moe,
            "qwen3_moe" => Family::Qwen3Moe,
            "olmoe" => Family::Olmoe,
            "deepseek_v3" => Family::DeepseekV3,
            "gpt_oss" => Family::GptOss,
            "llama4" | "llama4_text" => Family::Llama4,
            _ => return None,
        })
    }

    /// The canonical `model_type` (`llama4_text` for Llama 4).
    pub fn name(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Olmoe => "olmoe",
            Family::DeepseekV3 => "deepseek_v3",
            Family::GptOss => "gpt_oss",
            Family::Llama4 => "llama4_text",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Supported `model_type` values, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str =
    "mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3, gpt_oss, llama4_text, llama4";

/// Which layers of the model are MoE layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerPlacement {
    /// Every layer (Mixtral, OLMoE, GPT-OSS).
    All,
    /// Qwen2/3-MoE: `layer ∉ mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`.
    SparseStep {
        decoder_sparse_step: usize,
        mlp_only_layers: Vec<usize>,
    },
    /// DeepSeek: `layer >= first_k_dense_replace` and `layer % moe_layer_freq == 0`.
    FirstKDense {
        first_k_dense_replace: usize,
        moe_layer_freq: usize,
    },
    /// Llama 4: an explicit list (`moe_layers`).
    List(Vec<usize>),
    /// Llama 4 without `moe_layers`: every `step`-th layer from `step - 1` (transformers'
    /// `range(step - 1, num_hidden_layers, step)`), kept as a rule so nothing is sized by
    /// `num_hidden_layers` at parse time.
    Interleave { step: usize },
}

impl LayerPlacement {
    fn is_moe(&self, layer: usize) -> bool {
        match self {
            LayerPlacement::All => true,
            LayerPlacement::SparseStep {
                decoder_sparse_step,
                mlp_only_layers,
            } => !mlp_only_layers.contains(&layer) && (layer + 1).is_multiple_of(*decoder_sparse_step),
            LayerPlacement::FirstKDense {
                first_k_dense_replace,
                moe_layer_freq,
            } => layer >= *first_k_dense_replace && layer.is_multiple_of(*moe_layer_freq),
            LayerPlacement::List(layers) => layers.contains(&layer),
            LayerPlacement::Interleave { step } => (layer + 1).is_multiple_of(*step),
        }
    }

    fn describe(&self) -> String {
        match self {
            LayerPlacement::All => "every layer is MoE".into(),
            LayerPlacement::SparseStep {
                decoder_sparse_step,
                mlp_only_layers,
            } => format!(
                "MoE layers satisfy (layer + 1) % decoder_sparse_step ({decoder_sparse_step}) == 0 \
                 and are not in mlp_only_layers {mlp_only_layers:?}"
            ),
            LayerPlacement::FirstKDense {
                first_k_dense_replace,
                moe_layer_freq,
            } => format!(
                "the first {first_k_dense_replace} layer(s) are dense (first_k_dense_replace), \
                 MoE layers are multiples of moe_layer_freq {moe_layer_freq}"
            ),
            LayerPlacement::List(l) => format!("MoE layers are {l:?} (moe_layers)"),
            LayerPlacement::Interleave { step } => {
                format!("MoE layers satisfy (layer + 1) % interleave_moe_layer_step ({step}) == 0")
            }
        }
    }
}

/// Router parameters beyond top-k that some families need.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRouting {
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
}

/// The MoE-relevant part of a family's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub family: Family,
    /// `model_type` as written in the file (`llama4` for a multimodal Llama 4).
    pub model_type: String,
    /// The text model sits under `language_model.` (multimodal Llama 4).
    pub multimodal: bool,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_experts: usize,
    pub top_k: usize,
    /// Intermediate size of one routed expert.
    pub expert_intermediate_size: usize,
    /// Intermediate size of the shared expert(s), `None` when the family has none.
    pub shared_intermediate_size: Option<usize>,
    /// Declared weight/activation dtype (`dtype` or `torch_dtype`); `None` if the config has none.
    pub dtype: Option<DType>,
    pub norm_topk_prob: bool,
    /// DeepSeek group-limited routing.
    pub group_routing: Option<GroupRouting>,
    pub activation: Activation,
    /// Experts carry biases (GPT-OSS).
    pub expert_bias: bool,
    pub quant: QuantConfig,
    /// `quantization_config.quant_method` as written (`fp8`, `mxfp4`, `awq`, `modelopt`...):
    /// it tells apart on-disk packings that share a [`QuantAlgo`] (AWQ vs GPTQ INT4).
    pub quant_method: Option<String>,
    pub placement: LayerPlacement,
}

/// Reads keys of one config section (the text config for Llama 4) with a fallback section.
struct Keys<'a> {
    main: &'a Map<String, Value>,
    top: &'a Map<String, Value>,
    path: String,
}

impl Keys<'_> {
    fn raw(&self, key: &str) -> Option<&Value> {
        self.main.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, keys: &[&str]) -> Result<Option<usize>> {
        for &k in keys {
            if let Some(v) = self.raw(k) {
                return v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                    MoeError::config(k, format!("expected a non-negative integer in {}, got {v}", self.path))
                });
            }
        }
        Ok(None)
    }

    fn usize_req(&self, keys: &[&str]) -> Result<usize> {
        self.usize_opt(keys)?.ok_or_else(|| {
            MoeError::config(
                keys.first().copied().unwrap_or("?"),
                format!("{} has none of the keys {}", self.path, keys.join(" | ")),
            )
        })
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| MoeError::config(key, format!("expected a number in {}, got {v}", self.path))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| MoeError::config(key, format!("expected true/false in {}, got {v}", self.path))),
        }
    }

    fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|n| n as usize).ok_or_else(|| {
                        MoeError::config(
                            key,
                            format!("expected a list of layer indices in {}, got {v}", self.path),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(MoeError::config(
                key,
                format!("expected a list in {}, got {v}", self.path),
            )),
        }
    }

    fn str_opt(&self, key: &str) -> Option<&str> {
        self.raw(key).and_then(Value::as_str)
    }

    /// A key that may sit in the text section or at the top level (dtype, quantization).
    fn either(&self, key: &str) -> Option<&Value> {
        self.raw(key).or_else(|| self.top.get(key).filter(|v| !v.is_null()))
    }
}

impl HfConfig {
    /// Reads `dir/config.json` (and `dir/hf_quant_config.json` of ModelOpt exports, when the
    /// config itself declares no quantization).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<HfConfig> {
        let dir = dir.as_ref();
        let path = dir.join("config.json");
        let text = read_small_json(&path, limits::MAX_CONFIG_BYTES)?;
        let mut cfg = HfConfig::from_json_str(&text, &path.display().to_string())?;
        let modelopt = dir.join("hf_quant_config.json");
        if cfg.quant.algo == QuantAlgo::None && modelopt.is_file() {
            let text = read_small_json(&modelopt, limits::MAX_CONFIG_BYTES)?;
            let v: Value = serde_json::from_str(&text).map_err(|e| MoeError::BadCheckpoint {
                path: modelopt.display().to_string(),
                detail: format!("invalid JSON: {e}"),
            })?;
            // ModelOpt writes {"quantization": {"quant_algo": ...}}.
            if let Some(q) = v.get("quantization").and_then(Value::as_object) {
                cfg.quant = parse_quant(q)?;
                cfg.quant_method = Some("modelopt".into());
            }
        }
        Ok(cfg)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &str) -> Result<HfConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| MoeError::BadCheckpoint {
            path: path.into(),
            detail: format!("invalid JSON: {e}"),
        })?;
        let top = v.as_object().ok_or_else(|| MoeError::BadCheckpoint {
            path: path.into(),
            detail: "config.json is not a JSON object".into(),
        })?;
        HfConfig::from_json(top, path)
    }

    /// Parses a `config.json` object; `path` names it in errors.
    pub fn from_json(top: &Map<String, Value>, path: &str) -> Result<HfConfig> {
        let model_type = top
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| MoeError::UnsupportedModel {
                detail: format!("{path} has no `model_type`"),
            })?;
        let family = Family::from_model_type(model_type).ok_or_else(|| MoeError::UnsupportedModel {
            detail: format!("model_type `{model_type}` is not a supported MoE family ({SUPPORTED_MODEL_TYPES})"),
        })?;
        // Multimodal Llama 4 keeps the text model's keys under `text_config`.
        let (main, multimodal, section) = match top.get("text_config").and_then(Value::as_object) {
            Some(text) if model_type == "llama4" => (text, true, format!("{path} (text_config)")),
            _ => (top, false, path.to_string()),
        };
        let k = Keys {
            main,
            top,
            path: section,
        };

        let hidden_size = k.usize_req(&["hidden_size"])?;
        let num_hidden_layers = k.usize_req(&["num_hidden_layers"])?;
        let num_experts = k.usize_req(&["num_experts", "num_local_experts", "n_routed_experts"])?;
        let top_k = k.usize_req(&["num_experts_per_tok", "experts_per_token"])?;
        // Bounds before anything is sized by them (the layer list, weights, shared experts).
        limits::check_max("num_hidden_layers", num_hidden_layers, limits::MAX_LAYERS)?;
        limits::check_max("hidden_size", hidden_size, limits::MAX_DIM)?;
        limits::check_max("num_experts", num_experts, limits::MAX_EXPERTS)?;
        limits::check_max("num_experts_per_tok", top_k, limits::MAX_EXPERTS)?;
        let norm_topk_prob = k.bool_or("norm_topk_prob", false)?;

        let dtype = match k.either("dtype").or_else(|| k.either("torch_dtype")) {
            None => None,
            Some(Value::String(s)) => Some(DType::parse(s)?),
            Some(other) => {
                return Err(MoeError::config(
                    "dtype",
                    format!("expected a string in {path}, got {other}"),
                ));
            }
        };

        let (expert_intermediate_size, shared_intermediate_size) = match family {
            Family::Qwen2Moe => (
                k.usize_req(&["moe_intermediate_size", "intermediate_size"])?,
                k.usize_opt(&["shared_expert_intermediate_size"])?.filter(|&s| s > 0),
            ),
            Family::Qwen3Moe | Family::Olmoe => (k.usize_req(&["moe_intermediate_size", "intermediate_size"])?, None),
            Family::DeepseekV3 => {
                let i = k.usize_req(&["moe_intermediate_size"])?;
                let n_shared = k.usize_opt(&["n_shared_experts"])?.unwrap_or(0);
                limits::check_max("n_shared_experts", n_shared, limits::MAX_EXPERTS)?;
                let shared = limits::checked_product("moe_intermediate_size * n_shared_experts", &[i, n_shared])?;
                limits::check_max("moe_intermediate_size * n_shared_experts", shared, limits::MAX_DIM)?;
                (i, (n_shared > 0).then_some(shared))
            }
            Family::Mixtral | Family::GptOss => (k.usize_req(&["intermediate_size"])?, None),
            // Llama 4: experts and the shared expert use `intermediate_size`
            // (`Llama4TextMLP(config)` defaults to it); `intermediate_size_mlp` is the size of
            // the dense MLP of non-MoE layers.
            Family::Llama4 => {
                let i = k.usize_req(&["intermediate_size"])?;
                (i, Some(i))
            }
        };

        limits::check_max("intermediate_size", expert_intermediate_size, limits::MAX_DIM)?;
        if let Some(s) = shared_intermediate_size {
            limits::check_max("shared_expert_intermediate_size", s, limits::MAX_DIM)?;
        }

        let group_routing = match family {
            Family::DeepseekV3 => Some(GroupRouting {
                n_group: k.usize_opt(&["n_group"])?.unwrap_or(1),
                topk_group: k.usize_opt(&["topk_group"])?.unwrap_or(1),
                routed_scaling_factor: k.f32_opt("routed_scaling_factor")?.unwrap_or(1.0),
            }),
            _ => None,
        };

        // GPT-OSS writes `hidden_act: silu` but uses its own clamped activation; ignore it there.
        let act = k.str_opt("hidden_act").filter(|_| family != Family::GptOss);
        if let Some(act) = act.filter(|a| !matches!(*a, "silu" | "swish")) {
            return Err(MoeError::UnsupportedModel {
                detail: format!("hidden_act `{act}` of {model_type} experts is not supported (silu only)"),
            });
        }
        let (activation, expert_bias) = match family {
            Family::GptOss => {
                let mut act = Activation::GPT_OSS;
                if let (Some(limit), Activation::SwigluGptOss { alpha, beta, .. }) = (k.f32_opt("swiglu_limit")?, act) {
                    act = Activation::SwigluGptOss { alpha, beta, limit };
                }
                (act, true)
            }
            _ => (Activation::Swiglu, false),
        };

        let quant_method = match k.either("quantization_config") {
            Some(Value::Object(q)) => q.get("quant_method").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let quant = match k.either("quantization_config") {
            None => QuantConfig::default(),
            Some(Value::Object(q)) => parse_quant(q)?,
            Some(other) => {
                return Err(MoeError::config(
                    "quantization_config",
                    format!("expected an object in {path}, got {other}"),
                ));
            }
        };

        let placement = match family {
            Family::Mixtral | Family::Olmoe | Family::GptOss => LayerPlacement::All,
            Family::Qwen2Moe | Family::Qwen3Moe => {
                let step = k.usize_opt(&["decoder_sparse_step"])?.unwrap_or(1);
                if step == 0 {
                    return Err(MoeError::config("decoder_sparse_step", "must be at least 1"));
                }
                LayerPlacement::SparseStep {
                    decoder_sparse_step: step,
                    mlp_only_layers: k.usize_list("mlp_only_layers")?.unwrap_or_default(),
                }
            }
            Family::DeepseekV3 => {
                let freq = k.usize_opt(&["moe_layer_freq"])?.unwrap_or(1);
                if freq == 0 {
                    return Err(MoeError::config("moe_layer_freq", "must be at least 1"));
                }
                LayerPlacement::FirstKDense {
                    first_k_dense_replace: k.usize_opt(&["first_k_dense_replace"])?.unwrap_or(0),
                    moe_layer_freq: freq,
                }
            }
            Family::Llama4 => match k.usize_list("moe_layers")? {
                Some(l) => LayerPlacement::List(l),
                None => {
                    // transformers: range(step - 1, num_hidden_layers, step).
                    let step = k.usize_opt(&["interleave_moe_layer_step"])?.unwrap_or(1);
                    if step == 0 {
                        return Err(MoeError::config("interleave_moe_layer_step", "must be at least 1"));
                    }
                    LayerPlacement::Interleave { step }
                }
            },
        };

        Ok(HfConfig {
            family,
            model_type: model_type.to_string(),
            multimodal,
            hidden_size,
            num_hidden_layers,
            num_experts,
            top_k,
            expert_intermediate_size,
            shared_intermediate_size,
            dtype,
            norm_topk_prob,
            group_routing,
            activation,
            expert_bias,
            quant,
            quant_method,
            placement,
        })
    }

    /// How the quantized experts are stored on disk (from `quantization_config`).
    pub fn checkpoint_quant(&self) -> Result<CheckpointQuant> {
        CheckpointQuant::from_config(&self.quant, self.quant_method.as_deref())
    }

    /// Whether `layer` is an MoE layer of this model.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer < self.num_hidden_layers && self.placement.is_moe(layer)
    }

    /// MoE layer indices of the model, in order (lazily: `num_hidden_layers` is the file's).
    pub fn moe_layers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.num_hidden_layers).filter(|&l| self.is_moe_layer(l))
    }

    /// The first MoE layer, if any.
    pub fn first_moe_layer(&self) -> Option<usize> {
        self.moe_layers().next()
    }

    /// Refuses a layer that does not exist or is dense, naming it.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.num_hidden_layers {
            return Err(MoeError::UnsupportedModel {
                detail: format!(
                    "layer {layer} is out of range: the {} model has num_hidden_layers = {}",
                    self.model_type, self.num_hidden_layers
                ),
            });
        }
        if !self.placement.is_moe(layer) {
            return Err(MoeError::UnsupportedModel {
                detail: format!(
                    "layer {layer} of the {} model is a dense MLP layer, not MoE ({})",
                    self.model_type,
                    self.placement.describe()
                ),
            });
        }
        Ok(())
    }

    /// The routing method of the family (DeepSeek's `e_score_correction_bias` lives in the
    /// checkpoint and is left `None` here; [`crate::MoeBlock`] fills it in).
    pub fn routing(&self) -> RoutingMethod {
        let top_k = self.top_k;
        match self.family {
            Family::Mixtral | Family::GptOss => RoutingMethod::Renormalize { top_k },
            Family::Qwen2Moe | Family::Qwen3Moe | Family::Olmoe => {
                if self.norm_topk_prob {
                    RoutingMethod::RenormalizeNaive { top_k }
                } else {
                    RoutingMethod::Default { top_k }
                }
            }
            Family::DeepseekV3 => {
                let g = self.group_routing.clone().unwrap_or(GroupRouting {
                    n_group: 1,
                    topk_group: 1,
                    routed_scaling_factor: 1.0,
                });
                RoutingMethod::DeepSeekV3 {
                    top_k,
                    n_group: g.n_group,
                    topk_group: g.topk_group,
                    routed_scaling_factor: g.routed_scaling_factor,
                    e_score_correction_bias: None,
                    renormalize: self.norm_topk_prob,
                }
            }
            Family::Llama4 => RoutingMethod::Llama4 { top_k },
        }
    }

    /// The [`MoeConfig`] of MoE layer `layer` in `dtype` (the declared dtype when `None`;
    /// bf16 when the config declares none either). Validated: errors name the field.
    pub fn moe_config(&self, layer: usize, dtype: Option<DType>) -> Result<MoeConfig> {
        self.check_layer(layer)?;
        let dtype = dtype.or(self.dtype).unwrap_or(DType::BF16);
        let mut c = MoeConfig::new(
            self.num_experts,
            self.hidden_size,
            self.expert_intermediate_size,
            dtype,
            self.routing(),
        );
        c.activation = self.activation;
        c.bias = self.expert_bias;
        c.quant = self.quant.clone();
        c.apply_router_weight_on_input = self.family == Family::Llama4;
        c.layer_idx = Some(layer);
        c.validate()?;
        Ok(c)
    }
}

/// The text of a checkpoint's small JSON file (config, shard index), refused past `limit`
/// bytes before it is read whole.
pub(crate) fn read_small_json(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let io = |source| MoeError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    // One byte past the limit tells a file at the limit from a longer one, whatever its
    // metadata claims (pipes and /proc files report no length).
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > limit {
        return Err(MoeError::BadCheckpoint {
            path: path.display().to_string(),
            detail: format!("is larger than the limit of {limit} bytes (docs/LIMITS.md)"),
        });
    }
    Ok(text)
}

/// Maps a `quantization_config` (or ModelOpt `quantization`) object onto a [`QuantConfig`].
fn parse_quant(q: &Map<String, Value>) -> Result<QuantConfig> {
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    let algo = q.get("quant_algo").and_then(Value::as_str);
    let mut out = QuantConfig::default();
    // ModelOpt names the format (`quant_algo`: NVFP4, FP8, W8A16, ...), as the descriptors
    // record; the experts are then in the format's canonical layout.
    let modelopt = algo.and_then(FormatDescriptor::by_modelopt_algo);
    match (method, modelopt) {
        (_, Some(d)) => out.algo = d.algo,
        ("fp8", _) => match q.get("weight_block_size") {
            Some(Value::Array(b)) => {
                let dims: Vec<usize> = b.iter().filter_map(Value::as_u64).map(|v| v as usize).collect();
                let [r, c] = dims[..] else {
                    return Err(MoeError::config(
                        "quantization_config.weight_block_size",
                        format!("expected two block dimensions, got {b:?}"),
                    ));
                };
                out.algo = QuantAlgo::Fp8Block;
                out.weight_block_size = Some([r, c]);
            }
            _ => out.algo = QuantAlgo::Fp8PerTensor,
        },
        ("mxfp4", _) => out.algo = QuantAlgo::W4A16Mxfp4,
        ("awq" | "gptq", _) => {
            let bits = q
                .get("bits")
                .or_else(|| q.get("w_bit"))
                .and_then(Value::as_u64)
                .unwrap_or(4);
            let group = q
                .get("group_size")
                .or_else(|| q.get("q_group_size"))
                .and_then(Value::as_i64);
            match bits {
                4 => {
                    out.algo = QuantAlgo::W4A16Int4;
                    out.group_size = group.filter(|&g| g > 0).map(|g| g as usize);
                }
                8 => out.algo = QuantAlgo::W8A16,
                b => {
                    return Err(MoeError::UnsupportedModel {
                        detail: format!("{method} quantization with {b} bits is not supported (4 or 8)"),
                    });
                }
            }
        }
        (m, None) => {
            let modelopt: Vec<&str> = FORMATS.iter().filter_map(|d| d.modelopt_algo).collect();
            return Err(MoeError::UnsupportedModel {
                detail: format!(
                    "quantization method `{}` is not supported (fp8, mxfp4, modelopt {}, awq)",
                    algo.map(|a| format!("{m}/{a}")).unwrap_or_else(|| m.to_string()),
                    modelopt.join("/")
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HfConfig> {
        HfConfig::from_json_str(s, "config.json")
    }

    #[test]
    fn key_spellings() {
        let c = parse(
            r#"{"model_type":"qwen3_moe","hidden_size":8,"num_hidden_layers":2,"num_local_experts":4,
                "experts_per_token":2,"moe_intermediate_size":4,"intermediate_size":16,"torch_dtype":"bfloat16",
                "norm_topk_prob":true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.num_experts, c.top_k, c.expert_intermediate_size, c.dtype),
            (4, 2, 4, Some(DType::BF16))
        );
        assert_eq!(c.routing(), RoutingMethod::RenormalizeNaive { top_k: 2 });
    }

    #[test]
    fn placement_rules() {
        let c = parse(
            r#"{"model_type":"qwen2_moe","hidden_size":8,"num_hidden_layers":4,"num_experts":4,
                "num_experts_per_tok":2,"moe_intermediate_size":4,"decoder_sparse_step":2,"mlp_only_layers":[3]}"#,
        )
        .unwrap();
        assert_eq!(c.moe_layers().collect::<Vec<_>>(), vec![1]);
        let d = parse(
            r#"{"model_type":"deepseek_v3","hidden_size":8,"num_hidden_layers":4,"n_routed_experts":4,
                "num_experts_per_tok":2,"moe_intermediate_size":4,"first_k_dense_replace":3,"n_shared_experts":2}"#,
        )
        .unwrap();
        assert_eq!(d.moe_layers().collect::<Vec<_>>(), vec![3]);
        assert_eq!(d.shared_intermediate_size, Some(8));
        let l = parse(
            r#"{"model_type":"llama4","text_config":{"hidden_size":8,"num_hidden_layers":4,"num_local_experts":4,
                "num_experts_per_tok":1,"intermediate_size":4,"intermediate_size_mlp":16,"interleave_moe_layer_step":2},
                "torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        assert!(l.multimodal);
        assert_eq!(l.moe_layers().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(l.dtype, Some(DType::BF16));
    }

    #[test]
    fn huge_counts_are_refused_before_anything_is_sized_by_them() {
        let field = |s: &str| match parse(s) {
            Err(MoeError::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let ds = |extra: &str| {
            format!(
                r#"{{"model_type":"deepseek_v3","hidden_size":8,"num_hidden_layers":4,"n_routed_experts":4,
                "num_experts_per_tok":2,"moe_intermediate_size":4{extra}}}"#
            )
        };
        assert_eq!(field(&ds(r#","num_hidden_layers":1000000000000"#)), "num_hidden_layers");
        // 2^59 + 1 shared experts: the shared intermediate size would wrap (4 * (2^59 + 1)).
        assert_eq!(
            field(&ds(r#","n_shared_experts":576460752303423489"#)),
            "n_shared_experts"
        );
        assert_eq!(
            field(&ds(r#","moe_intermediate_size":65536,"n_shared_experts":64"#)),
            "moe_intermediate_size * n_shared_experts"
        );
        // Llama 4's interleaved layers are a rule, not a list of num_hidden_layers entries.
        let l = parse(
            r#"{"model_type":"llama4_text","hidden_size":8,"num_hidden_layers":65536,"num_local_experts":4,
                "num_experts_per_tok":1,"intermediate_size":4,"interleave_moe_layer_step":3}"#,
        )
        .unwrap();
        assert_eq!(l.placement, LayerPlacement::Interleave { step: 3 });
        assert_eq!(l.first_moe_layer(), Some(2));
        assert!(l.is_moe_layer(65534) && !l.is_moe_layer(65535));
    }

    #[test]
    fn quantization_configs() {
        let base = r#""model_type":"deepseek_v3","hidden_size":8,"num_hidden_layers":1,"n_routed_experts":4,
                "num_experts_per_tok":2,"moe_intermediate_size":4"#;
        let c = parse(&format!(
            r#"{{{base},"quantization_config":{{"quant_method":"fp8","weight_block_size":[128,128],"activation_scheme":"dynamic"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.quant.algo, QuantAlgo::Fp8Block);
        assert_eq!(c.quant.weight_block_size, Some([128, 128]));
        let c = parse(&format!(
            r#"{{{base},"quantization_config":{{"quant_method":"modelopt","quant_algo":"NVFP4"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.quant.algo, QuantAlgo::Nvfp4);
        let c = parse(&format!(
            r#"{{{base},"quantization_config":{{"quant_method":"mxfp4"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.quant.algo, QuantAlgo::W4A16Mxfp4);
        let e = parse(&format!(
            r#"{{{base},"quantization_config":{{"quant_method":"bitsnbytes"}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("bitsnbytes"), "{e}");
    }
}
