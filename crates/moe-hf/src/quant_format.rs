//! The quantized expert formats a checkpoint can hold, and the canonical tensors each format
//! serves per projection (the contract with the quant methods of `moe-quant`).
//!
//! [`CheckpointQuant`] is finer than [`moe_core::QuantConfig`]: it also says how the bytes sit
//! on disk (AWQ's int32 packing is not GPTQ's), which only the loader cares about. The
//! canonical tensors of one projection with logical shape `[out, in]` are:
//!
//! | format | tensors (suffix: dtype shape) |
//! |---|---|
//! | none | `weight`: float `[out, in]` |
//! | FP8 block | `weight`: f8e4m3 `[out, in]`; `weight_scale_inv`: f32 `[ceil(out/br), ceil(in/bc)]` |
//! | FP8 per-tensor | `weight`: f8e4m3 `[out, in]`; `weight_scale`, `input_scale`: f32 `[]`/`[1]` |
//! | NVFP4 | `weight`: u8 `[out, in/2]`; `weight_scale`: f8e4m3 `[out, in/16]`; `weight_scale_2`, `input_scale`: f32 `[]`/`[1]` |
//! | MXFP4 | `weight`: u8 `[out, in/2]`; `weight_scale`: u8 (UE8M0) `[out, in/32]` |
//! | INT4 group | `weight`: u8 `[out, in/2]` (unsigned codes, low nibble first); `weight_scale`: float `[out, in/g]`; `weight_zero`: u8 `[out, in/g]` |
//! | INT8 | `weight`: i8 `[out, in]`; `weight_scale`: float `[out]` |
//!
//! Biases (`bias`, float `[out]`) are unquantized in every format. Scales written as f32 by
//! the formats' producers are also accepted in bf16/f16 (decoded exactly), as `moe-quant`'s
//! methods accept them.

use moe_core::{DType, MoeError, QuantAlgo, QuantConfig, Result};

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

/// Default AWQ group size when the config names none (AutoAWQ's default `q_group_size`).
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
const E4M3: &[DType] = &[DType::F8E4M3];
/// UE8M0 scales are written as uint8 (GPT-OSS) or as torch's float8_e8m0fnu: same bytes.
const E8M0_BYTES: &[DType] = &[DType::U8, DType::E8M0];
const BYTES: &[DType] = &[DType::U8];

impl CheckpointQuant {
    /// The checkpoint format of a parsed `quantization_config`: `method` is its `quant_method`
    /// (it tells AWQ's packing from GPTQ's, which `QuantConfig` does not).
    pub fn from_config(q: &QuantConfig, method: Option<&str>) -> Result<CheckpointQuant> {
        Ok(match q.algo {
            QuantAlgo::None => CheckpointQuant::None,
            QuantAlgo::Fp8Block => CheckpointQuant::Fp8Block {
                block: q.weight_block_size.unwrap_or([128, 128]),
            },
            QuantAlgo::Fp8PerTensor => CheckpointQuant::Fp8PerTensor,
            QuantAlgo::Nvfp4 => CheckpointQuant::Nvfp4,
            QuantAlgo::W4A16Mxfp4 => CheckpointQuant::Mxfp4,
            QuantAlgo::W4A16Int4 => match method {
                Some("awq") => CheckpointQuant::Int4Awq {
                    group: q.group_size.unwrap_or(AWQ_DEFAULT_GROUP),
                },
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

    /// The layer's quantization config for this format (what `moe-quant` selects a method by).
    pub fn quant_config(self) -> QuantConfig {
        let algo = match self {
            CheckpointQuant::None => QuantAlgo::None,
            CheckpointQuant::Fp8Block { .. } => QuantAlgo::Fp8Block,
            CheckpointQuant::Fp8PerTensor => QuantAlgo::Fp8PerTensor,
            CheckpointQuant::Nvfp4 => QuantAlgo::Nvfp4,
            CheckpointQuant::Mxfp4 => QuantAlgo::W4A16Mxfp4,
            CheckpointQuant::Int4Awq { .. } => QuantAlgo::W4A16Int4,
            CheckpointQuant::Int8 => QuantAlgo::W8A16,
        };
        QuantConfig {
            algo,
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

    /// Short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointQuant::None => "unquantized",
            CheckpointQuant::Fp8Block { .. } => "FP8 block",
            CheckpointQuant::Fp8PerTensor => "FP8 per-tensor",
            CheckpointQuant::Nvfp4 => "NVFP4",
            CheckpointQuant::Mxfp4 => "MXFP4",
            CheckpointQuant::Int4Awq { .. } => "INT4 (AWQ)",
            CheckpointQuant::Int8 => "INT8",
        }
    }

    /// Elements of the input dimension one scale covers (the input dim must be a multiple of it
    /// for packed formats), `None` when any input size works.
    pub fn in_multiple(self) -> Option<usize> {
        match self {
            CheckpointQuant::Nvfp4 => Some(16),
            CheckpointQuant::Mxfp4 => Some(32),
            CheckpointQuant::Int4Awq { group } => Some(group.max(8)),
            _ => None,
        }
    }

    /// The canonical tensors of one projection `[out, in]`, or why the shape cannot be held.
    pub fn canonical_tensors(self, out: usize, inp: usize) -> std::result::Result<Vec<CanonicalTensor>, String> {
        if let Some(m) = self.in_multiple().filter(|&m| m > 0 && !inp.is_multiple_of(m)) {
            return Err(format!(
                "{} needs the input dimension to be a multiple of {m}, got {inp}",
                self.name()
            ));
        }
        let t = |suffix, dtypes, shape| CanonicalTensor { suffix, dtypes, shape };
        let exact = |s: &[usize]| ShapeRule::Exact(s.to_vec());
        Ok(match self {
            CheckpointQuant::None => vec![t("weight", FLOATS, exact(&[out, inp]))],
            CheckpointQuant::Fp8Block { block: [br, bc] } => {
                if br == 0 || bc == 0 {
                    return Err(format!("FP8 block size [{br}, {bc}] has a zero dimension"));
                }
                vec![
                    t("weight", E4M3, exact(&[out, inp])),
                    t("weight_scale_inv", FLOATS, exact(&[out.div_ceil(br), inp.div_ceil(bc)])),
                ]
            }
            CheckpointQuant::Fp8PerTensor => vec![
                t("weight", E4M3, exact(&[out, inp])),
                t("weight_scale", FLOATS, ShapeRule::Scalar),
                t("input_scale", FLOATS, ShapeRule::Scalar),
            ],
            CheckpointQuant::Nvfp4 => vec![
                t("weight", BYTES, exact(&[out, inp / 2])),
                t("weight_scale", E4M3, exact(&[out, inp / 16])),
                t("weight_scale_2", FLOATS, ShapeRule::Scalar),
                t("input_scale", FLOATS, ShapeRule::Scalar),
            ],
            CheckpointQuant::Mxfp4 => vec![
                t("weight", BYTES, exact(&[out, inp / 2])),
                t("weight_scale", E8M0_BYTES, exact(&[out, inp / 32])),
            ],
            CheckpointQuant::Int4Awq { group } => vec![
                t("weight", BYTES, exact(&[out, inp / 2])),
                t("weight_scale", FLOATS, exact(&[out, inp / group])),
                t("weight_zero", BYTES, exact(&[out, inp / group])),
            ],
            CheckpointQuant::Int8 => vec![
                t("weight", &[DType::I8], exact(&[out, inp])),
                t("weight_scale", FLOATS, exact(&[out])),
            ],
        })
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
    fn scalar_rule_accepts_both_spellings() {
        assert!(ShapeRule::Scalar.matches(&[]) && ShapeRule::Scalar.matches(&[1]) && !ShapeRule::Scalar.matches(&[2]));
    }
}
