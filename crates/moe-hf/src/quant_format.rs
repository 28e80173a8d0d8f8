//! The quantized expert formats a checkpoint can hold, and the canonical tensors each format
//! serves per projection (the contract with the quant methods of `moe-quant`).
//!
//! [`CheckpointQuant`] is finer than [`moe_core::QuantConfig`]: it also says how the bytes sit
//! on disk (AWQ's int32 packing is not GPTQ's), which only the loader cares about. The
//! canonical tensors of one projection with logical shape `[out, in]` (suffix, accepted dtypes,
//! shape) are the format's descriptor's (`moe_core::quant_format::FORMATS`, `checkpoint`), which
//! `moe-quant`'s test `every_method_matches_its_descriptor` holds to what its methods load, so
//! [`CheckpointQuant::canonical_tensors`] only resolves the layer's block or group size;
//! `docs/QUANTIZATION.md` has the table. Biases (`bias`, float `[out]`) are unquantized in
//! every format. Scales written as f32 by the formats' producers are also accepted in bf16/f16
//! (decoded exactly). What stays a `match` here: telling layouts apart by `quant_method`
//! ([`CheckpointQuant::from_config`]) and AWQ's own packing ([`CheckpointQuant::awq_tensors`]).

use moe_core::quant_format::CheckpointShape;
use moe_core::{DType, FormatDescriptor, MoeError, QuantAlgo, QuantConfig, Result};

/// How the quantized experts of a checkpoint are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointQuant {
    /// Float experts.
    None,
    /// DeepSeek-V3/R1: e4m3 weights with an f32 `weight_scale_inv` (a multiplier, despite the
    /// name) per `[rows, cols]` block.
    Fp8Block { block: [usize; 2] },
    /// ModelOpt FP8: e4m3 weights, per-tensor f32 `weight_scale` and `input_scale`.
    Fp8PerTensor,
    /// ModelOpt NVFP4: packed e2m1, e4m3 scale per 16 inputs, f32 `weight_scale_2`, `input_scale`.
    Nvfp4,
    /// OCP MXFP4: packed e2m1 with a UE8M0 scale per 32 inputs (GPT-OSS `_blocks`/`_scales`,
    /// or per-expert `weight`/`weight_scale`).
    Mxfp4,
    /// AutoAWQ GEMM packing: per projection `qweight` i32 `[in, out/8]`, `qzeros` i32
    /// `[in/g, out/8]`, `scales` float `[in/g, out]`, converted to the canonical INT4 tensors.
    Int4Awq { group: usize },
    /// INT8 weight-only per output channel, stored canonically (`weight` i8, `weight_scale`).
    Int8,
}

/// Nibble order of AutoAWQ's int32 packing: nibble `i` of a word holds output column
/// `8 * word + AWQ_ORDER[i]` (AutoAWQ packs columns 0,2,4,6,1,3,5,7 to match its GEMM kernel).
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Default AWQ group size when the config names none (AutoAWQ's default `q_group_size`, the
/// INT4 descriptor's default too; test `awq_default_group_is_the_descriptors`).
pub const AWQ_DEFAULT_GROUP: usize = 128;

/// The expected shape of a canonical tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeRule {
    Exact(Vec<usize>),
    /// A per-tensor scalar, stored as `[]` (ModelOpt) or `[1]`.
    Scalar,
}

impl ShapeRule {
    pub fn matches(&self, shape: &[usize]) -> bool {
        match self {
            ShapeRule::Exact(s) => s == shape,
            ShapeRule::Scalar => shape.is_empty() || shape == [1],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ShapeRule::Exact(s) => format!("{s:?}"),
            ShapeRule::Scalar => "[] or [1]".into(),
        }
    }
}

/// One canonical tensor a format needs for a projection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalTensor {
    pub suffix: &'static str,
    /// Dtypes accepted on disk.
    pub dtypes: &'static [DType],
    pub shape: ShapeRule,
}

const FLOATS: &[DType] = &[DType::F32, DType::BF16, DType::F16];

impl CheckpointQuant {
    /// The checkpoint format of a parsed `quantization_config`: `method` is its `quant_method`
    /// (it tells AWQ's packing from GPTQ's, which `QuantConfig` does not).
    pub fn from_config(q: &QuantConfig, method: Option<&str>) -> Result<CheckpointQuant> {
        Ok(match q.algo {
            QuantAlgo::None => CheckpointQuant::None,
            QuantAlgo::Fp8Block => CheckpointQuant::canonical(q),
            QuantAlgo::Fp8PerTensor => CheckpointQuant::Fp8PerTensor,
            QuantAlgo::Nvfp4 => CheckpointQuant::Nvfp4,
            QuantAlgo::W4A16Mxfp4 => CheckpointQuant::Mxfp4,
            QuantAlgo::W4A16Int4 => match method {
                Some("awq") => CheckpointQuant::canonical(q),
                other => {
                    return Err(MoeError::UnsupportedModel {
                        detail: format!(
                            "INT4 checkpoints with quant_method `{}` are not supported: only AutoAWQ's GEMM \
                             packing (quant_method awq) is mapped (see docs/QUANTIZATION.md)",
                            other.unwrap_or("?")
                        ),
                    });
                }
            },
            QuantAlgo::W8A16 => match method {
                // An 8-bit "awq"/"gptq" config packs four int8 per int32: not the canonical layout.
                Some("awq" | "gptq") => {
                    return Err(MoeError::UnsupportedModel {
                        detail: "8-bit AWQ/GPTQ packing is not supported; INT8 experts load from the \
                                 canonical `weight` (i8) + `weight_scale` layout"
                            .into(),
                    });
                }
                _ => CheckpointQuant::Int8,
            },
        })
    }

    /// The quantization algorithm of this layout.
    pub fn algo(self) -> QuantAlgo {
        match self {
            CheckpointQuant::None => QuantAlgo::None,
            CheckpointQuant::Fp8Block { .. } => QuantAlgo::Fp8Block,
            CheckpointQuant::Fp8PerTensor => QuantAlgo::Fp8PerTensor,
            CheckpointQuant::Nvfp4 => QuantAlgo::Nvfp4,
            CheckpointQuant::Mxfp4 => QuantAlgo::W4A16Mxfp4,
            CheckpointQuant::Int4Awq { .. } => QuantAlgo::W4A16Int4,
            CheckpointQuant::Int8 => QuantAlgo::W8A16,
        }
    }

    /// The format's descriptor (names, canonical tensors; `moe_core::quant_format`).
    pub fn descriptor(self) -> &'static FormatDescriptor {
        self.algo().descriptor()
    }

    /// The layout of a layer quantized as `q`, with the format's default block or group size
    /// where `q` names none (INT4 as AutoAWQ's packing, the one INT4 layout read; AWQ's default
    /// group is the descriptor's).
    pub fn canonical(q: &QuantConfig) -> CheckpointQuant {
        let d = q.algo.descriptor();
        match q.algo {
            QuantAlgo::None => CheckpointQuant::None,
            QuantAlgo::Fp8Block => CheckpointQuant::Fp8Block {
                block: d.block(q).unwrap_or([128, 128]),
            },
            QuantAlgo::Fp8PerTensor => CheckpointQuant::Fp8PerTensor,
            QuantAlgo::Nvfp4 => CheckpointQuant::Nvfp4,
            QuantAlgo::W4A16Mxfp4 => CheckpointQuant::Mxfp4,
            QuantAlgo::W4A16Int4 => CheckpointQuant::Int4Awq {
                group: d.group(q).unwrap_or(AWQ_DEFAULT_GROUP),
            },
            QuantAlgo::W8A16 => CheckpointQuant::Int8,
        }
    }

    /// The layer's quantization config for this format (what `moe-quant` selects a method by).
    pub fn quant_config(self) -> QuantConfig {
        QuantConfig {
            algo: self.algo(),
            weight_block_size: match self {
                CheckpointQuant::Fp8Block { block } => Some(block),
                _ => None,
            },
            group_size: match self {
                CheckpointQuant::Int4Awq { group } => Some(group),
                _ => None,
            },
        }
    }

    /// Short name for messages (the descriptor's `checkpoint_name`).
    pub fn name(self) -> &'static str {
        let d = self.descriptor();
        d.checkpoint_name
    }

    /// Elements of the input dimension one scale covers (the input dim must be a multiple of it
    /// for packed formats), `None` when any input size works. Read from the descriptor's exact
    /// blocks; AWQ's packing also wants at least 8.
    pub fn in_multiple(self) -> Option<usize> {
        let m = self.descriptor().in_multiple(&self.quant_config());
        let m = match self {
            CheckpointQuant::Int4Awq { .. } => m.max(8),
            _ => m,
        };
        (m > 1).then_some(m)
    }

    /// The canonical tensors of one projection `[out, in]`, or why the shape cannot be held:
    /// the descriptor's checkpoint tensors with the layer's block or group size.
    pub fn canonical_tensors(self, out: usize, inp: usize) -> std::result::Result<Vec<CanonicalTensor>, String> {
        if let Some(m) = self.in_multiple().filter(|&m| !inp.is_multiple_of(m)) {
            return Err(format!(
                "{} needs the input dimension to be a multiple of {m}, got {inp}",
                self.name()
            ));
        }
        let d = self.descriptor();
        let q = self.quant_config();
        if let Some([br, bc]) = d.block(&q).filter(|b| b.contains(&0)) {
            return Err(format!(
                "{}: the block size [{br}, {bc}] has a zero dimension",
                self.name()
            ));
        }
        if d.group(&q) == Some(0) {
            return Err(format!("{}: the group size is zero", self.name()));
        }
        Ok(d.checkpoint
            .iter()
            .map(|t| CanonicalTensor {
                suffix: t.suffix,
                dtypes: t.dtypes,
                shape: match t.shape {
                    CheckpointShape::Scalar => ShapeRule::Scalar,
                    _ => ShapeRule::Exact(d.checkpoint_shape(t, out, inp, &q)),
                },
            })
            .collect())
    }

    /// AWQ's on-disk tensors of one projection `[out, in]` (real suffixes).
    pub fn awq_tensors(group: usize, out: usize, inp: usize) -> std::result::Result<Vec<CanonicalTensor>, String> {
        if !out.is_multiple_of(8) {
            return Err(format!(
                "AWQ packs 8 output channels per int32, got {out} output channels"
            ));
        }
        if group == 0 || !inp.is_multiple_of(group) {
            return Err(format!(
                "AWQ group size {group} does not divide the input dimension {inp}"
            ));
        }
        Ok(vec![
            CanonicalTensor {
                suffix: "qweight",
                dtypes: &[DType::I32],
                shape: ShapeRule::Exact(vec![inp, out / 8]),
            },
            CanonicalTensor {
                suffix: "qzeros",
                dtypes: &[DType::I32],
                shape: ShapeRule::Exact(vec![inp / group, out / 8]),
            },
            CanonicalTensor {
                suffix: "scales",
                dtypes: FLOATS,
                shape: ShapeRule::Exact(vec![inp / group, out]),
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_block_scales_cover_partial_blocks() {
        let t = CheckpointQuant::Fp8Block { block: [128, 128] }
            .canonical_tensors(32, 64)
            .unwrap();
        assert_eq!(t[1].shape, ShapeRule::Exact(vec![1, 1]));
        let t = CheckpointQuant::Fp8Block { block: [128, 128] }
            .canonical_tensors(256, 129)
            .unwrap();
        assert_eq!(t[1].shape, ShapeRule::Exact(vec![2, 2]));
    }

    #[test]
    fn packed_formats_refuse_ragged_inputs() {
        assert!(
            CheckpointQuant::Mxfp4
                .canonical_tensors(8, 48)
                .unwrap_err()
                .contains("multiple of 32")
        );
        assert!(
            CheckpointQuant::Nvfp4
                .canonical_tensors(8, 40)
                .unwrap_err()
                .contains("multiple of 16")
        );
        assert!(CheckpointQuant::Nvfp4.canonical_tensors(8, 48).is_ok());
    }

    #[test]
    fn int4_needs_awq() {
        let q = QuantConfig {
            algo: QuantAlgo::W4A16Int4,
            group_size: Some(64),
            ..QuantConfig::default()
        };
        assert_eq!(
            CheckpointQuant::from_config(&q, Some("awq")).unwrap(),
            CheckpointQuant::Int4Awq { group: 64 }
        );
        assert!(CheckpointQuant::from_config(&q, Some("gptq")).is_err());
    }

    #[test]
    fn awq_default_group_is_the_descriptors() {
        let q = QuantConfig {
            algo: QuantAlgo::W4A16Int4,
            ..QuantConfig::default()
        };
        assert_eq!(
            CheckpointQuant::canonical(&q),
            CheckpointQuant::Int4Awq {
                group: AWQ_DEFAULT_GROUP
            }
        );
    }

    #[test]
    fn every_format_has_a_layout_that_round_trips() {
        for algo in QuantAlgo::ALL {
            let q = QuantConfig {
                algo,
                ..QuantConfig::default()
            };
            let c = CheckpointQuant::canonical(&q);
            assert_eq!(c.algo(), algo);
            assert_eq!(CheckpointQuant::canonical(&c.quant_config()), c);
            let t = c.canonical_tensors(256, 256).unwrap();
            assert_eq!(t[0].suffix, "weight", "{algo:?}");
        }
    }

    #[test]
    fn scalar_rule_accepts_both_spellings() {
        assert!(ShapeRule::Scalar.matches(&[]) && ShapeRule::Scalar.matches(&[1]) && !ShapeRule::Scalar.matches(&[2]));
    }
}
