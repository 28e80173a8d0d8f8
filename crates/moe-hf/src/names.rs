//! Real tensor names of each family's MoE block: where the block of layer N lives (its
//! prefix), the router, the shared experts, and how the routed experts are stored on disk.

use moe_core::{MoeError, Result};

use crate::checkpoint::Checkpoint;
use crate::config::Family;

/// How a family stores its routed experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// One tensor per expert and projection, `experts.{e}.{gate|up|down}.weight`, with the
    /// PyTorch `[out, in]` layout (gate/up `[I, H]`, down `[H, I]`).
    PerExpert {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// GPT-OSS: `experts.gate_up_proj` `[E, H, 2I]` (in × out) with gate = even and up = odd
    /// output columns, `gate_up_proj_bias` `[E, 2I]` interleaved alike, `down_proj` `[E, I, H]`
    /// and `down_proj_bias` `[E, H]`.
    FusedInterleaved,
    /// Llama 4: `experts.gate_up_proj` `[E, H, 2I]` with gate = first half and up = second
    /// half of the output columns, `down_proj` `[E, I, H]`.
    FusedHalves,
}

/// Mixtral's `w1/w3/w2` naming (gate, up, down).
pub const MIXTRAL_NAMES: ExpertLayout = ExpertLayout::PerExpert {
    gate: "w1",
    up: "w3",
    down: "w2",
};
/// The `gate_proj/up_proj/down_proj` naming of most families.
pub const PROJ_NAMES: ExpertLayout = ExpertLayout::PerExpert {
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

/// The shared expert(s) of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedNames {
    /// Module prefix (relative to the block), e.g. `shared_expert.`.
    pub module: &'static str,
    /// Sigmoid gate of the shared output (Qwen2-MoE `shared_expert_gate.weight`).
    pub gate: Option<&'static str>,
}

/// Every real name the block of one layer uses, relative to [`BlockNames::prefix`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockNames {
    /// Absolute prefix of the block, e.g. `model.layers.0.mlp.`.
    pub prefix: String,
    /// Router weight `[E, H]`.
    pub router_weight: &'static str,
    /// Router bias `[E]` (GPT-OSS).
    pub router_bias: Option<&'static str>,
    /// DeepSeek's `e_score_correction_bias` `[E]`.
    pub score_correction_bias: Option<&'static str>,
    pub experts: ExpertLayout,
    pub shared: Option<SharedNames>,
}

impl BlockNames {
    /// Absolute name of a block-relative name.
    pub fn full(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Resolves the names of layer `layer` of `family` against the checkpoint: the prefix is
    /// the first candidate under which the router exists (so multimodal Llama 4 checkpoints
    /// under `language_model.` and Mixtral exports under `mlp.` both load).
    pub fn resolve(family: Family, layer: usize, ckpt: &Checkpoint) -> Result<BlockNames> {
        let (modules, router_weight, router_bias, score_bias, shared): (
            &[&str],
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            Option<SharedNames>,
        ) = match family {
            Family::Mixtral => (&["block_sparse_moe", "mlp"], "gate.weight", None, None, None),
            Family::Qwen2Moe => (
                &["mlp"],
                "gate.weight",
                None,
                None,
                Some(SharedNames {
                    module: "shared_expert.",
                    gate: Some("shared_expert_gate.weight"),
                }),
            ),
            Family::Qwen3Moe | Family::Olmoe => (&["mlp"], "gate.weight", None, None, None),
            Family::DeepseekV3 => (
                &["mlp"],
                "gate.weight",
                None,
                Some("gate.e_score_correction_bias"),
                Some(SharedNames {
                    module: "shared_experts.",
                    gate: None,
                }),
            ),
            Family::GptOss => (&["mlp"], "router.weight", Some("router.bias"), None, None),
            Family::Llama4 => (
                &["feed_forward"],
                "router.weight",
                None,
                None,
                Some(SharedNames {
                    module: "shared_expert.",
                    gate: None,
                }),
            ),
        };
        let roots = ["model.", "language_model.model.", "model.language_model.", ""];
        let mut tried = Vec::new();
        let mut prefix = None;
        'search: for root in roots {
            for m in modules {
                let p = format!("{root}layers.{layer}.{m}.");
                if ckpt.contains(&format!("{p}{router_weight}")) {
                    prefix = Some(p);
                    break 'search;
                }
                tried.push(format!("{p}{router_weight}"));
            }
        }
        let prefix = prefix.ok_or_else(|| MoeError::MissingTensor {
            name: format!("router of layer {layer} (looked for {})", tried.join(", ")),
        })?;

        // Quantized exports may store the experts of any family per expert (ModelOpt writes
        // Llama 4 as `experts.{e}.gate_proj`; AWQ's per-projection tensors are `qweight`), so
        // the layout follows what expert 0 looks like in the checkpoint.
        let has_proj = |proj: &str| {
            ["weight", "qweight"]
                .iter()
                .any(|s| ckpt.contains(&format!("{prefix}experts.0.{proj}.{s}")))
        };
        let experts = match family {
            Family::GptOss | Family::Llama4 if has_proj("gate_proj") => PROJ_NAMES,
            Family::GptOss => ExpertLayout::FusedInterleaved,
            Family::Llama4 => ExpertLayout::FusedHalves,
            Family::Mixtral if !has_proj("gate_proj") => MIXTRAL_NAMES,
            _ => PROJ_NAMES,
        };
        // Whether the shared expert is used is the config's call (e.g. DeepSeek with
        // n_shared_experts = 0); the block requires these names only then.
        Ok(BlockNames {
            prefix,
            router_weight,
            router_bias,
            score_correction_bias: score_bias,
            experts,
            shared,
        })
    }
}
