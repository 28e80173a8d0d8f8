//! The layer shapes `moe bench` runs (named presets) and the arithmetic of a run: FLOPs of
//! the routed experts and bytes of the expert weights a forward actually reads.
//!
//! Byte counts follow the roofline recipe of `perf-anchors.md` §6: only the experts that at
//! least one token selected are read, each once per forward (its three matrices with their
//! scales and zero points: the packed bytes of the quantized formats).

use std::fmt;

use moe_core::{QuantAlgo, QuantConfig};

/// How the experts' weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    Bf16,
    /// E4M3 codes with one f32 scale per `BLOCK x BLOCK` block (DeepSeek-V3).
    Fp8Block,
    /// INT4 codes, f32 scale and u8 zero point per group of 128 inputs (AWQ), bf16 activations.
    Int4,
    /// INT8 codes with one f32 scale per output channel, bf16 activations.
    Int8,
    /// E2M1 codes, an E4M3 scale per 16 inputs and an f32 global scale (ModelOpt NVFP4).
    Nvfp4,
    /// E2M1 codes with a UE8M0 scale per 32 inputs (GPT-OSS), bf16 activations.
    Mxfp4,
}

/// Side of an FP8 scale block.
pub const FP8_BLOCK: usize = 128;

impl WeightFormat {
    pub const ALL: [WeightFormat; 7] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Fp8Block,
        WeightFormat::Int4,
        WeightFormat::Int8,
        WeightFormat::Nvfp4,
        WeightFormat::Mxfp4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Fp8Block => "fp8-block",
            WeightFormat::Int4 => "int4",
            WeightFormat::Int8 => "int8",
            WeightFormat::Nvfp4 => "nvfp4",
            WeightFormat::Mxfp4 => "mxfp4",
        }
    }

    pub fn parse(s: &str) -> Option<WeightFormat> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The names `parse` takes, for messages.
    pub fn names() -> String {
        Self::ALL.map(WeightFormat::name).join(", ")
    }

    /// The layer's quantization (`QuantAlgo::None` for float weights).
    pub fn quant(self) -> QuantConfig {
        let algo = match self {
            WeightFormat::F32 | WeightFormat::Bf16 => QuantAlgo::None,
            WeightFormat::Fp8Block => QuantAlgo::Fp8Block,
            WeightFormat::Int4 => QuantAlgo::W4A16Int4,
            WeightFormat::Int8 => QuantAlgo::W8A16,
            WeightFormat::Nvfp4 => QuantAlgo::Nvfp4,
            WeightFormat::Mxfp4 => QuantAlgo::W4A16Mxfp4,
        };
        QuantConfig {
            algo,
            weight_block_size: (algo == QuantAlgo::Fp8Block).then_some([FP8_BLOCK, FP8_BLOCK]),
            group_size: None,
        }
    }

    /// Stored bytes of one `[rows, cols]` matrix, scales included: what a forward reads of it
    /// (`moe_quant::quantize::matrix_bytes` for the quantized formats).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> u64 {
        match self {
            WeightFormat::F32 => 4 * (rows * cols) as u64,
            WeightFormat::Bf16 => 2 * (rows * cols) as u64,
            q => moe_quant::quantize::matrix_bytes(&q.quant(), rows, cols) as u64,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One benchmarked layer shape: a SwiGLU MoE with `experts` experts of `[inter, hidden]`
/// gate/up and `[hidden, inter]` down projections, top-`top_k` routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub hidden: usize,
    pub inter: usize,
    pub experts: usize,
    pub top_k: usize,
    pub weights: WeightFormat,
    /// Whether the default run (no `--preset`) includes it.
    pub in_default_run: bool,
    /// The weight formats a device backend's default run (no `--preset`, no `--weights`)
    /// times it in, in order: bf16, then the format of an FP8 release.
    pub device_formats: &'static [WeightFormat],
}

/// Token counts of the default table.
pub const TOKENS: [usize; 5] = [1, 8, 64, 512, 4096];

/// Token counts of `--sweep` (issue 15): decode sizes in powers of two, then prefill.
pub const SWEEP_TOKENS: [usize; 11] = [1, 2, 4, 8, 16, 32, 128, 256, 1024, 2048, 8192];

/// Named weight variants of a preset: `--preset NAME` runs the shape of preset `of` with
/// weights `weights`, and its rows carry the preset's name and the format. Qwen3-30B-A3B's FP8
/// release (`Qwen/Qwen3-30B-A3B-FP8`) stores its experts in DeepSeek-V3's layout: e4m3 codes
/// with one scale per 128x128 block.
pub struct Variant {
    pub name: &'static str,
    pub of: &'static str,
    pub weights: WeightFormat,
}

pub const VARIANTS: [Variant; 1] = [Variant {
    name: "qwen3-30b-a3b-fp8",
    of: "qwen3-30b-a3b",
    weights: WeightFormat::Fp8Block,
}];

const BF16_FP8: &[WeightFormat] = &[WeightFormat::Bf16, WeightFormat::Fp8Block];

/// Routed FLOPs above which a row is left out of the default run. Every preset's T = 4096 row
/// (2.9 TFLOP for mixtral-8x7b and deepseek-v3: ~20 s per forward on two cores, 4 forwards,
/// the peer's capped by its time budget) is in: the table covers every requested token count.
pub const DEFAULT_RUN_MAX_FLOP: f64 = 3.0e12;

pub const PRESETS: [Preset; 4] = [
    Preset {
        name: "qwen3-30b-a3b",
        hidden: 2048,
        inter: 768,
        experts: 128,
        top_k: 8,
        weights: WeightFormat::Bf16,
        in_default_run: true,
        device_formats: BF16_FP8,
    },
    Preset {
        name: "mixtral-8x7b",
        hidden: 4096,
        inter: 14336,
        experts: 8,
        top_k: 2,
        weights: WeightFormat::Bf16,
        in_default_run: true,
        device_formats: &[WeightFormat::Bf16],
    },
    // 22.5 GB in bf16 would not fit next to the OS in 24 GB; FP8 128-block is its released format.
    Preset {
        name: "deepseek-v3",
        hidden: 7168,
        inter: 2048,
        experts: 256,
        top_k: 8,
        weights: WeightFormat::Fp8Block,
        in_default_run: true,
        device_formats: BF16_FP8,
    },
    // For tests and smoke runs: generated in milliseconds.
    Preset {
        name: "tiny",
        hidden: 64,
        inter: 32,
        experts: 8,
        top_k: 2,
        weights: WeightFormat::Bf16,
        in_default_run: false,
        device_formats: &[],
    },
];

impl Preset {
    /// The preset or named variant ([`VARIANTS`]) called `name`.
    pub fn find(name: &str) -> Option<Preset> {
        PRESETS.iter().copied().find(|p| p.name == name).or_else(|| {
            let v = VARIANTS.iter().find(|v| v.name == name)?;
            Some(Preset::find(v.of)?.with_weights(v.weights))
        })
    }

    /// Every name [`Preset::find`] knows, presets first.
    pub fn names() -> Vec<&'static str> {
        PRESETS
            .iter()
            .map(|p| p.name)
            .chain(VARIANTS.iter().map(|v| v.name))
            .collect()
    }

    /// The same shape with weights stored as `w`.
    pub fn with_weights(mut self, w: WeightFormat) -> Preset {
        self.weights = w;
        self
    }

    /// Routed FLOPs of `tokens` tokens: three `H x I` GEMMs per (token, expert) pair, two
    /// FLOPs per multiply-add: `2 * T * k * 3 * H * I`.
    pub fn flops(&self, tokens: usize) -> f64 {
        2.0 * tokens as f64 * self.top_k as f64 * 3.0 * self.hidden as f64 * self.inter as f64
    }

    /// Stored bytes of one expert: gate and up `[I, H]`, down `[H, I]`.
    pub fn expert_bytes(&self) -> u64 {
        2 * self.weights.matrix_bytes(self.inter, self.hidden) + self.weights.matrix_bytes(self.hidden, self.inter)
    }

    /// Stored bytes of all experts.
    pub fn total_bytes(&self) -> u64 {
        self.experts as u64 * self.expert_bytes()
    }

    /// Bytes of expert weights a forward reads when `touched` distinct experts were selected.
    pub fn weight_bytes(&self, touched: usize) -> u64 {
        touched as u64 * self.expert_bytes()
    }

    /// Expected distinct experts under uniform routing: `E * (1 - (1 - k/E)^T)`
    /// (`perf-anchors.md` §6.2); the run reports the count its routing actually gave.
    pub fn expected_touched(&self, tokens: usize) -> f64 {
        let e = self.experts as f64;
        e * (1.0 - (1.0 - self.top_k as f64 / e).powi(tokens as i32))
    }
}

/// Distinct experts among the selected ids (`-1` and out-of-range ids are not experts).
pub fn touched_experts(ids: &[i32], experts: usize) -> usize {
    let mut seen = vec![false; experts];
    for &id in ids {
        if let Some(s) = usize::try_from(id).ok().and_then(|i| seen.get_mut(i)) {
            *s = true;
        }
    }
    seen.iter().filter(|&&s| s).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_preset_flops_and_bytes_by_hand() {
        let p = Preset::find("tiny").unwrap();
        assert_eq!((p.hidden, p.inter, p.experts, p.top_k), (64, 32, 8, 2));
        // One token, two experts, three 64x32 matrices each: 2 * 1 * 2 * 3 * 64 * 32 = 24576.
        assert_eq!(p.flops(1), 24576.0);
        assert_eq!(p.flops(8), 8.0 * 24576.0);
        // bf16: 3 * 64 * 32 * 2 bytes = 12288 per expert; 3 experts touched -> 36864.
        assert_eq!(p.expert_bytes(), 12288);
        assert_eq!(p.weight_bytes(3), 36864);
        assert_eq!(p.total_bytes(), 8 * 12288);
        // f32 doubles it.
        assert_eq!(p.with_weights(WeightFormat::F32).expert_bytes(), 24576);
    }

    #[test]
    fn fp8_block_bytes_count_codes_and_scales() {
        // 64x32 matrix: 2048 code bytes + one (partial) 128x128 block scale of 4 bytes.
        assert_eq!(WeightFormat::Fp8Block.matrix_bytes(64, 32), 2048 + 4);
        // DeepSeek-V3 gate: 2048x7168 codes + 16 x 56 scales.
        assert_eq!(
            WeightFormat::Fp8Block.matrix_bytes(2048, 7168),
            2048 * 7168 + 4 * 16 * 56
        );
        let p = Preset::find("tiny").unwrap().with_weights(WeightFormat::Fp8Block);
        assert_eq!(p.expert_bytes(), 3 * (2048 + 4));
    }

    #[test]
    fn packed_formats_count_their_packed_bytes_with_scales() {
        // Qwen3-30B-A3B's gate: 768 x 2048. 4-bit codes are half a byte an element; INT4 adds
        // an f32 scale and a u8 zero per 128 inputs, MXFP4 a UE8M0 byte per 32, NVFP4 an E4M3
        // byte per 16 and two f32 scalars; INT8 a byte an element and an f32 per row.
        let (r, c) = (768u64, 2048u64);
        let n = r * c;
        let bytes = |w: WeightFormat| w.matrix_bytes(r as usize, c as usize);
        assert_eq!(bytes(WeightFormat::Int4), n / 2 + 5 * n / 128);
        assert_eq!(bytes(WeightFormat::Mxfp4), n / 2 + n / 32);
        assert_eq!(bytes(WeightFormat::Nvfp4), n / 2 + n / 16 + 8);
        assert_eq!(bytes(WeightFormat::Int8), n + 4 * r);
        for w in WeightFormat::ALL {
            assert_eq!(WeightFormat::parse(w.name()), Some(w));
            assert!(WeightFormat::names().contains(w.name()));
        }
        assert_eq!(WeightFormat::parse("int3"), None);
    }

    #[test]
    fn real_preset_sizes() {
        let q = Preset::find("qwen3-30b-a3b").unwrap();
        // 128 experts x 3 x 2048 x 768 x 2 B = 1.2 GB; one token reads 8 experts = 75.5 MB.
        assert_eq!(q.total_bytes(), 128 * 3 * 2048 * 768 * 2);
        assert_eq!(q.weight_bytes(8), 75_497_472);
        // Mixtral: bf16 experts total 2.8 GB, as the issue says.
        let m = Preset::find("mixtral-8x7b").unwrap();
        assert_eq!(m.total_bytes(), 2_818_572_288);
        assert_eq!(m.flops(1), 2.0 * 2.0 * 3.0 * 4096.0 * 14336.0);
    }

    #[test]
    fn qwen3_fp8_variant_is_the_qwen3_shape_in_fp8_blocks() {
        let q = Preset::find("qwen3-30b-a3b").unwrap();
        let f = Preset::find("qwen3-30b-a3b-fp8").unwrap();
        assert_eq!(f, q.with_weights(WeightFormat::Fp8Block));
        assert_eq!(f.name, "qwen3-30b-a3b");
        // I = 768 and H = 2048 hold whole 128x128 blocks: 6 x 16 scales per gate/up, 16 x 6 per down.
        assert_eq!(f.expert_bytes(), 3 * (768 * 2048 + 4 * 6 * 16));
        assert!(Preset::names().contains(&"qwen3-30b-a3b-fp8"));
        assert_eq!(SWEEP_TOKENS, [1, 2, 4, 8, 16, 32, 128, 256, 1024, 2048, 8192]);
        // Every preset a device run times in FP8 is one whose FP8 kernels take it (I % 128 == 0).
        for p in PRESETS
            .iter()
            .filter(|p| p.device_formats.contains(&WeightFormat::Fp8Block))
        {
            assert!(
                p.inter.is_multiple_of(FP8_BLOCK) && p.hidden.is_multiple_of(FP8_BLOCK),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn touched_and_expected_experts() {
        assert_eq!(touched_experts(&[3, 1, 3, -1, 9, 1], 8), 2);
        let p = Preset::find("tiny").unwrap();
        assert_eq!(p.expected_touched(1), 2.0);
        assert!((p.expected_touched(1000) - 8.0).abs() < 1e-9);
        assert_eq!(WeightFormat::parse("fp8-block"), Some(WeightFormat::Fp8Block));
        assert_eq!(WeightFormat::parse("int3"), None);
    }
}
