//! One descriptor per quantization format: the facts about a format that more than one crate
//! needs, as data, in the lowest crate every reader depends on.
//!
//! [`FORMATS`] holds one [`FormatDescriptor`] per [`QuantAlgo`] variant, in the variant's
//! order, so [`QuantAlgo::descriptor`] is an index and not a `match`. The crates read it:
//!
//! - `moe-core`: the config spelling ([`QuantAlgo::as_str`], [`QuantAlgo::from_name`]) and
//!   [`QuantAlgo::ALL`];
//! - `moe-quant`: every method's name and EPLB status (`Format`'s defaults), the format
//!   parameters' defaults, and a test that each method's checkpoint tensors and per-slot
//!   tensors are the descriptor's; the oracle's activation quantization
//!   (`quantize::reference_act_quants`);
//! - `moe-backends`: the host backends' activation dtypes (`QUANT_DTYPES` is built from
//!   [`FormatDescriptor::dtypes`]) and a test that a device backend's own table is a subset;
//! - `moe-hf`: the checkpoint's canonical tensors and their shapes, the layout's name, the
//!   ModelOpt `quant_algo` spelling, and the `moe quantize` format names;
//! - `moe-cli`: the choices of `moe quantize --format` and their help;
//! - `moe-testkit`: the §7.5 tolerance of every matrix cell.
//!
//! What stays a `match`: code that decodes bytes (the kernels' `QuantMatrix` and `ActQuant`),
//! the selection of a method's type (`select_host_quant_method`), the canonical quantizers
//! (`moe_quant::quantize`), the parsing of a Hugging Face `quantization_config` whose
//! `quant_method` tells layouts apart (`CheckpointQuant::from_config`) and the files
//! `moe quantize` writes. A test with an exhaustive `match` ties the list to the enum, so a new
//! variant without a descriptor fails to compile or to test.

use crate::{DType, EplbSupportStatus, QuantAlgo, QuantConfig};

/// The layer-level parameter a format takes, with its default (TensorRT-LLM's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatParam {
    None,
    /// `QuantConfig::weight_block_size` `[rows, cols]` (FP8 block).
    Block([usize; 2]),
    /// `QuantConfig::group_size` along the input dimension (INT4).
    Group(usize),
}

/// One side of a block of weights that one entry of a checkpoint tensor covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    Fixed(usize),
    /// The rows of the layer's weight block ([`FormatParam::Block`]).
    BlockRows,
    /// The columns of the layer's weight block ([`FormatParam::Block`]).
    BlockCols,
    /// The layer's group size ([`FormatParam::Group`]).
    Group,
}

/// How a checkpoint tensor of one projection relates to its weight `[out, in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointShape {
    /// `[ceil(out / rows), ceil(in / cols)]`: one entry per `rows x cols` block (codes are
    /// `1 x 1`, packed 4-bit codes `1 x 2`). With `exact`, the block must divide the weight
    /// (every format but FP8 block scales, which allow partial edge blocks).
    Blocks { rows: Extent, cols: Extent, exact: bool },
    /// `[out]`: one entry per output channel.
    PerRow,
    /// `[]` or `[1]`: one value for the projection.
    Scalar,
}

/// One tensor `{e}.{w1|w2|w3}.{suffix}` of a format's canonical checkpoint layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointTensor {
    pub suffix: &'static str,
    /// Dtypes accepted on disk.
    pub dtypes: &'static [DType],
    pub shape: CheckpointShape,
}

/// How a format quantizes the activations entering each of the two GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationQuant {
    /// Used as they are (unquantized and the W*A16 formats).
    None,
    /// Static per-tensor FP8 E4M3; each GEMM input's dequant scale is the largest `input_scale`
    /// of its projections over every expert (FC1: w1 and w3).
    Fp8PerTensor,
    /// Dynamic FP8 E4M3 per row, in groups of the weight block's columns.
    Fp8Groups,
    /// Dynamic NVFP4 blocks of 16 under a static global scale, `1 / max input_scale` over every
    /// expert.
    Nvfp4,
}

impl ActivationQuant {
    /// Whether the checkpoint carries an `input_scale` per projection.
    pub const fn reads_input_scale(self) -> bool {
        matches!(self, ActivationQuant::Fp8PerTensor | ActivationQuant::Nvfp4)
    }
}

/// TensorRT-LLM's accuracy criterion for a format (core spec §7.5): an element mismatches when
/// `|out - ref| > atol + rtol * |ref|`; a run passes iff the mismatch fraction is below
/// `1 - percent`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantTolerance {
    pub rtol: f64,
    /// The absolute tolerance for outputs of order 1 (what the test matrix uses).
    pub atol: f64,
    pub percent: f64,
    /// `Some(f)` where the table derives the absolute tolerance from the reference:
    /// `atol = f * max |ref|` (INT8 weight-only).
    pub atol_of_max: Option<f64>,
}

impl QuantTolerance {
    const fn new(rtol: f64, atol: f64, percent: f64) -> QuantTolerance {
        QuantTolerance {
            rtol,
            atol,
            percent,
            atol_of_max: None,
        }
    }
}

/// Everything about one quantization format that is data. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FormatDescriptor {
    pub algo: QuantAlgo,
    /// Canonical name: problems, reports, the capability table, `QuantAlgo::as_str`
    /// (TensorRT-LLM's spelling).
    pub name: &'static str,
    /// The spelling of `QuantConfig::algo` in config files: serde's snake case of the variant,
    /// which differs from `name` for FP8 per tensor (`fp8_per_tensor`) and the W*A16 formats
    /// (`w4_a16_mxfp4`, `w4_a16_int4`, `w8_a16`). [`QuantAlgo::from_name`] takes either.
    pub config_name: &'static str,
    /// The quant method's name (`QuantMethod::name`).
    pub method: &'static str,
    /// One line for help texts.
    pub summary: &'static str,
    /// The layer parameter and its default.
    pub param: FormatParam,
    /// Name of the checkpoint layout in messages.
    pub checkpoint_name: &'static str,
    /// ModelOpt's `quant_algo` for checkpoints that name the format that way.
    pub modelopt_algo: Option<&'static str>,
    /// The canonical checkpoint tensors of each projection (biases, float `[out]`, are common
    /// to every format and not listed).
    pub checkpoint: &'static [CheckpointTensor],
    /// The per-slot tensors the quant method creates and registers for EPLB (biases aside).
    pub slot_tensors: &'static [&'static str],
    pub activation: ActivationQuant,
    /// Activation dtypes the format is run with: exactly those of the host backends (which
    /// compute in f32 whatever the format); a device backend lists a subset in its own table.
    pub dtypes: &'static [DType],
    pub eplb: EplbSupportStatus,
    /// `moe quantize --format` spelling, where `moe quantize` writes the format.
    pub quantize_name: Option<&'static str>,
    pub tolerance: QuantTolerance,
}

const FLOATS: &[DType] = &[DType::F32, DType::BF16, DType::F16];
const ALL_ACT: &[DType] = &[DType::F32, DType::F16, DType::BF16];
const E4M3: &[DType] = &[DType::F8E4M3];
/// Packed 4-bit codes: bytes, or torch's float4_e2m1fn_x2 (same bytes).
const PACKED_FP4: &[DType] = &[DType::U8, DType::Fp4E2M1x2];
/// UE8M0 scales are written as uint8 (GPT-OSS) or as torch's float8_e8m0fnu: same bytes.
const E8M0_BYTES: &[DType] = &[DType::U8, DType::E8M0];
const BYTES: &[DType] = &[DType::U8];

const fn blocks(rows: Extent, cols: Extent) -> CheckpointShape {
    CheckpointShape::Blocks {
        rows,
        cols,
        exact: true,
    }
}
const CODES: CheckpointShape = blocks(Extent::Fixed(1), Extent::Fixed(1));
const PACKED: CheckpointShape = blocks(Extent::Fixed(1), Extent::Fixed(2));
const fn t(suffix: &'static str, dtypes: &'static [DType], shape: CheckpointShape) -> CheckpointTensor {
    CheckpointTensor { suffix, dtypes, shape }
}

/// Every format, one per [`QuantAlgo`] variant, in the variant's order (capability tables list
/// them so).
pub const FORMATS: &[FormatDescriptor] = &[
    FormatDescriptor {
        algo: QuantAlgo::None,
        name: "none",
        config_name: "none",
        method: "unquantized",
        summary: "float weights in the layer dtype",
        param: FormatParam::None,
        checkpoint_name: "unquantized",
        modelopt_algo: None,
        checkpoint: &[t("weight", FLOATS, CODES)],
        slot_tensors: &["w3_w1_weight", "w2_weight"],
        activation: ActivationQuant::None,
        dtypes: ALL_ACT,
        eplb: EplbSupportStatus::Supported,
        quantize_name: None,
        // Per-expert GatedMLP reference with f32 accumulation of weighted outputs.
        tolerance: QuantTolerance::new(0.2, 0.2, 0.96),
    },
    FormatDescriptor {
        algo: QuantAlgo::Fp8PerTensor,
        name: "fp8",
        config_name: "fp8_per_tensor",
        method: "fp8_per_tensor",
        summary: "FP8 e4m3 weights with one scale per projection, static per-tensor FP8 activations (ModelOpt)",
        param: FormatParam::None,
        checkpoint_name: "FP8 per-tensor",
        modelopt_algo: Some("FP8"),
        checkpoint: &[
            t("weight", E4M3, CODES),
            t("weight_scale", FLOATS, CheckpointShape::Scalar),
            t("input_scale", FLOATS, CheckpointShape::Scalar),
        ],
        slot_tensors: &[
            "w3_w1_weight",
            "w2_weight",
            "w3_w1_weight_scale",
            "w2_weight_scale",
            "fc31_dequant",
            "fc2_dequant",
        ],
        activation: ActivationQuant::Fp8PerTensor,
        // TensorRT-LLM's CUTLASS table.
        dtypes: ALL_ACT,
        eplb: EplbSupportStatus::NotSupported,
        quantize_name: None,
        tolerance: QuantTolerance::new(0.04, 0.1, 0.95),
    },
    FormatDescriptor {
        algo: QuantAlgo::Fp8Block,
        name: "fp8_block",
        config_name: "fp8_block",
        method: "fp8_block",
        summary: "FP8 e4m3 weights, f32 scale per 128x128 block (DeepSeek-V3 layout)",
        param: FormatParam::Block([128, 128]),
        checkpoint_name: "FP8 block",
        modelopt_algo: None,
        checkpoint: &[
            t("weight", E4M3, CODES),
            // A multiplier, despite its name.
            t(
                "weight_scale_inv",
                FLOATS,
                CheckpointShape::Blocks {
                    rows: Extent::BlockRows,
                    cols: Extent::BlockCols,
                    exact: false,
                },
            ),
        ],
        slot_tensors: &["w3_w1_weight", "w2_weight", "w3_w1_weight_scale", "w2_weight_scale"],
        activation: ActivationQuant::Fp8Groups,
        // TensorRT-LLM runs it on bf16 only (DeepSeek); f32 is accepted for full-precision
        // reference runs; f16 is refused as there.
        dtypes: &[DType::F32, DType::BF16],
        eplb: EplbSupportStatus::NotVerified,
        quantize_name: Some("fp8-block"),
        // Cutlass/CuteDSL blockscaling reference.
        tolerance: QuantTolerance::new(0.01, 0.1, 1.0),
    },
    FormatDescriptor {
        algo: QuantAlgo::Nvfp4,
        name: "nvfp4",
        config_name: "nvfp4",
        method: "nvfp4",
        summary: "NVFP4: e2m1 weights, e4m3 scale per 16, f32 global scale (ModelOpt layout)",
        param: FormatParam::None,
        checkpoint_name: "NVFP4",
        modelopt_algo: Some("NVFP4"),
        checkpoint: &[
            t("weight", PACKED_FP4, PACKED),
            t("weight_scale", E4M3, blocks(Extent::Fixed(1), Extent::Fixed(16))),
            t("weight_scale_2", FLOATS, CheckpointShape::Scalar),
            t("input_scale", FLOATS, CheckpointShape::Scalar),
        ],
        slot_tensors: &[
            "w3_w1_weight",
            "w2_weight",
            "w3_w1_weight_scale",
            "w2_weight_scale",
            "w3_w1_weight_scale_2",
            "w2_weight_scale_2",
            "fc31_alpha",
            "fc2_alpha",
        ],
        activation: ActivationQuant::Nvfp4,
        // For fp16 checkpoints too.
        dtypes: ALL_ACT,
        eplb: EplbSupportStatus::Supported,
        quantize_name: Some("nvfp4"),
        tolerance: QuantTolerance::new(0.01, 0.15, 0.97),
    },
    FormatDescriptor {
        algo: QuantAlgo::W4A16Mxfp4,
        name: "w4a16_mxfp4",
        config_name: "w4_a16_mxfp4",
        method: "mxfp4",
        summary: "MXFP4: e2m1 weights, UE8M0 scale per 32 (GPT-OSS layout)",
        param: FormatParam::None,
        checkpoint_name: "MXFP4",
        modelopt_algo: None,
        checkpoint: &[
            t("weight", PACKED_FP4, PACKED),
            t("weight_scale", E8M0_BYTES, blocks(Extent::Fixed(1), Extent::Fixed(32))),
        ],
        slot_tensors: &["w3_w1_weight", "w2_weight", "w3_w1_weight_scale", "w2_weight_scale"],
        activation: ActivationQuant::None,
        // GPT-OSS runs in bf16, whose range its activations need (f16 is refused).
        dtypes: &[DType::F32, DType::BF16],
        eplb: EplbSupportStatus::Supported,
        quantize_name: Some("mxfp4"),
        // Dequantized reference.
        tolerance: QuantTolerance::new(0.10, 0.1, 0.85),
    },
    FormatDescriptor {
        algo: QuantAlgo::W4A16Int4,
        name: "w4a16_int4",
        config_name: "w4_a16_int4",
        method: "int4_group",
        summary: "INT4 group-wise weights with zero points (AWQ-style), 16-bit activations",
        param: FormatParam::Group(128),
        checkpoint_name: "INT4 (AWQ)",
        modelopt_algo: None,
        checkpoint: &[
            t("weight", BYTES, PACKED),
            t("weight_scale", FLOATS, blocks(Extent::Fixed(1), Extent::Group)),
            t("weight_zero", BYTES, blocks(Extent::Fixed(1), Extent::Group)),
        ],
        slot_tensors: &[
            "w3_w1_weight",
            "w2_weight",
            "w3_w1_weight_scale",
            "w2_weight_scale",
            "w3_w1_weight_zero",
            "w2_weight_zero",
        ],
        activation: ActivationQuant::None,
        dtypes: ALL_ACT,
        eplb: EplbSupportStatus::NotSupported,
        quantize_name: None,
        // Not in the table: group-wise INT4 takes the W4A16 MXFP4 row (same 4-bit weight error).
        tolerance: QuantTolerance::new(0.10, 0.1, 0.85),
    },
    FormatDescriptor {
        algo: QuantAlgo::W8A16,
        name: "w8a16",
        config_name: "w8_a16",
        method: "int8_channel",
        summary: "INT8 weight-only, one scale per output channel",
        param: FormatParam::None,
        checkpoint_name: "INT8",
        // TensorRT-LLM's name for INT8 weight-only per channel.
        modelopt_algo: Some("W8A16"),
        checkpoint: &[
            t("weight", &[DType::I8], CODES),
            t("weight_scale", FLOATS, CheckpointShape::PerRow),
        ],
        slot_tensors: &["w3_w1_weight", "w2_weight", "w3_w1_weight_scale", "w2_weight_scale"],
        activation: ActivationQuant::None,
        dtypes: ALL_ACT,
        eplb: EplbSupportStatus::NotSupported,
        quantize_name: None,
        // The table's atol is derived from the reference magnitude; with outputs of order 1
        // (the matrix's scaled weights) 1e-2 covers the bf16 rounding of the output.
        tolerance: QuantTolerance {
            rtol: 1e-7,
            atol: 1e-2,
            percent: 1.0,
            atol_of_max: Some(1.5 / 128.0),
        },
    },
];

impl QuantAlgo {
    /// Every algorithm, in the order capability tables list them (that of [`FORMATS`]).
    pub const ALL: [QuantAlgo; FORMATS.len()] = {
        let mut all = [QuantAlgo::None; FORMATS.len()];
        let mut i = 0;
        while i < FORMATS.len() {
            all[i] = FORMATS[i].algo;
            i += 1;
        }
        all
    };

    /// The format's descriptor.
    pub const fn descriptor(self) -> &'static FormatDescriptor {
        &FORMATS[self as usize]
    }

    /// The canonical name (config files, problems, reports).
    pub const fn as_str(self) -> &'static str {
        self.descriptor().name
    }

    /// The algorithm whose canonical name or config spelling is `name`.
    pub fn from_name(name: &str) -> Option<QuantAlgo> {
        FORMATS
            .iter()
            .find(|d| d.name == name || d.config_name == name)
            .map(|d| d.algo)
    }
}

impl FormatDescriptor {
    /// The layer's weight block `[rows, cols]` (FP8 block): `q`'s, else the default.
    pub fn block(&self, q: &QuantConfig) -> Option<[usize; 2]> {
        match self.param {
            FormatParam::Block(default) => Some(q.weight_block_size.unwrap_or(default)),
            _ => None,
        }
    }

    /// The layer's group size (INT4): `q`'s, else the default.
    pub fn group(&self, q: &QuantConfig) -> Option<usize> {
        match self.param {
            FormatParam::Group(default) => Some(q.group_size.unwrap_or(default)),
            _ => None,
        }
    }

    /// The size `e` stands for in a layer configured by `q` (1 where the format has no such
    /// parameter).
    pub fn extent(&self, e: Extent, q: &QuantConfig) -> usize {
        match e {
            Extent::Fixed(n) => n,
            Extent::BlockRows => self.block(q).map_or(1, |b| b[0]),
            Extent::BlockCols => self.block(q).map_or(1, |b| b[1]),
            Extent::Group => self.group(q).unwrap_or(1),
        }
    }

    /// Elements of the input dimension every exact block must divide (1 when any input size
    /// works).
    pub fn in_multiple(&self, q: &QuantConfig) -> usize {
        self.checkpoint
            .iter()
            .filter_map(|t| match t.shape {
                CheckpointShape::Blocks { cols, exact: true, .. } => Some(self.extent(cols, q)),
                _ => None,
            })
            .fold(1, usize::max)
    }

    /// The shape of checkpoint tensor `t` for a weight `[out, inp]` (`[]` for a scalar, which
    /// loaders also accept as `[1]`).
    pub fn checkpoint_shape(&self, t: &CheckpointTensor, out: usize, inp: usize, q: &QuantConfig) -> Vec<usize> {
        match t.shape {
            CheckpointShape::Blocks { rows, cols, .. } => {
                let (r, c) = (self.extent(rows, q), self.extent(cols, q));
                vec![out.div_ceil(r.max(1)), inp.div_ceil(c.max(1))]
            }
            CheckpointShape::PerRow => vec![out],
            CheckpointShape::Scalar => vec![],
        }
    }

    /// The format whose `moe quantize` name is `name`.
    pub fn by_quantize_name(name: &str) -> Option<&'static FormatDescriptor> {
        FORMATS.iter().find(|d| d.quantize_name == Some(name))
    }

    /// The format ModelOpt's `quant_algo` names (case-insensitive).
    pub fn by_modelopt_algo(algo: &str) -> Option<&'static FormatDescriptor> {
        FORMATS
            .iter()
            .find(|d| d.modelopt_algo.is_some_and(|a| a.eq_ignore_ascii_case(algo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one exhaustive `match` over the variants: a new variant fails to compile here until
    /// it is given a position, and the test then wants its descriptor.
    fn position(a: QuantAlgo) -> usize {
        match a {
            QuantAlgo::None => 0,
            QuantAlgo::Fp8PerTensor => 1,
            QuantAlgo::Fp8Block => 2,
            QuantAlgo::Nvfp4 => 3,
            QuantAlgo::W4A16Mxfp4 => 4,
            QuantAlgo::W4A16Int4 => 5,
            QuantAlgo::W8A16 => 6,
        }
    }

    #[test]
    fn every_variant_has_exactly_one_descriptor_at_its_position() {
        let variants = [
            QuantAlgo::None,
            QuantAlgo::Fp8PerTensor,
            QuantAlgo::Fp8Block,
            QuantAlgo::Nvfp4,
            QuantAlgo::W4A16Mxfp4,
            QuantAlgo::W4A16Int4,
            QuantAlgo::W8A16,
        ];
        assert_eq!(FORMATS.len(), variants.len());
        for a in variants {
            assert_eq!(FORMATS.iter().filter(|d| d.algo == a).count(), 1, "{a:?}");
            assert_eq!(FORMATS[position(a)].algo, a);
            assert_eq!(a as usize, position(a));
            assert_eq!(a.descriptor().algo, a);
        }
        assert_eq!(QuantAlgo::ALL.to_vec(), variants.to_vec());
    }

    #[test]
    fn names_are_unique_and_config_names_are_the_serde_spelling() {
        for (i, d) in FORMATS.iter().enumerate() {
            for e in &FORMATS[i + 1..] {
                assert_ne!(d.name, e.name);
                assert_ne!(d.method, e.method);
                assert!(d.quantize_name.is_none() || d.quantize_name != e.quantize_name);
                assert!(d.modelopt_algo.is_none() || d.modelopt_algo != e.modelopt_algo);
            }
            let json = serde_json::to_string(&d.algo).unwrap();
            assert_eq!(json, format!("\"{}\"", d.config_name));
            assert_eq!(serde_json::from_str::<QuantAlgo>(&json).unwrap(), d.algo);
            assert_eq!(QuantAlgo::from_name(d.name), Some(d.algo));
            if let Some(n) = d.quantize_name {
                assert_eq!(FormatDescriptor::by_quantize_name(n).unwrap().algo, d.algo);
            }
        }
        assert_eq!(QuantAlgo::from_name("int3"), None);
    }

    #[test]
    fn descriptors_are_consistent() {
        for d in FORMATS {
            assert!(!d.dtypes.is_empty(), "{}", d.name);
            assert!(d.checkpoint.first().is_some_and(|t| t.suffix == "weight"), "{}", d.name);
            assert!(d.slot_tensors.contains(&"w3_w1_weight") && d.slot_tensors.contains(&"w2_weight"));
            assert_eq!(
                d.checkpoint.iter().any(|t| t.suffix == "input_scale"),
                d.activation.reads_input_scale(),
                "{}",
                d.name
            );
            let uses_block = d.checkpoint.iter().any(|t| {
                matches!(
                    t.shape,
                    CheckpointShape::Blocks {
                        rows: Extent::BlockRows,
                        ..
                    }
                )
            });
            assert_eq!(uses_block, matches!(d.param, FormatParam::Block(_)), "{}", d.name);
            assert!(d.tolerance.percent > 0.0 && d.tolerance.percent <= 1.0);
        }
    }

    #[test]
    fn shapes_follow_the_layer_parameters() {
        let q = QuantConfig::default();
        let fp8 = QuantAlgo::Fp8Block.descriptor();
        assert_eq!(fp8.checkpoint_shape(&fp8.checkpoint[1], 256, 129, &q), vec![2, 2]);
        let q64 = QuantConfig {
            algo: QuantAlgo::W4A16Int4,
            group_size: Some(64),
            ..QuantConfig::default()
        };
        let int4 = QuantAlgo::W4A16Int4.descriptor();
        assert_eq!(int4.checkpoint_shape(&int4.checkpoint[1], 8, 256, &q64), vec![8, 4]);
        assert_eq!(int4.in_multiple(&q64), 64);
        assert_eq!(int4.in_multiple(&q), 128);
        assert_eq!(QuantAlgo::Nvfp4.descriptor().in_multiple(&q), 16);
        assert_eq!(QuantAlgo::W4A16Mxfp4.descriptor().in_multiple(&q), 32);
        assert_eq!(fp8.in_multiple(&q), 1);
    }
}
