//! `quantize_checkpoint`: float fixtures written as FP8 block, NVFP4 and MXFP4 load back and
//! compute the bf16 oracle's outputs within each format's documented bound; layouts, sharding,
//! refusals; and the resident size of loaded quantized layers against their packed size.

use std::path::Path;

use moe_core::{DType, MoeError, Tensor};
use moe_hf::{BlockOptions, Checkpoint, MoeBlock, QuantizeOptions, TargetFormat, quantize_checkpoint};

use crate::common::{Scratch, TOKENS, fixture, io_tensor, rel_l2};
use crate::quant::quant_fixture;

/// Relative L2 bound of a quantized-by-us layer against the bf16 oracle of the float model:
/// three quantized GEMMs (each adding its weights' error, see [`weight_bound`]), the format's
/// activation quantization, and the oracle's own bf16 rounding. Measured worst cases over the
/// five families below (docs/QUANTIZATION.md): FP8 block 6.1e-2 (weights only), NVFP4 0.30,
/// MXFP4 0.25 — FP4 keeps one mantissa bit, so a 1-layer model with H = 64 shows it plainly.
pub fn quantized_bound(format: TargetFormat) -> f64 {
    match format {
        TargetFormat::Fp8Block => 8e-2,
        TargetFormat::Nvfp4 => 0.35,
        TargetFormat::Mxfp4 => 0.3,
    }
}

/// Relative Frobenius error bound of one dequantized projection against its float weights
/// (measured means: FP8 block 2.7e-2, NVFP4 9.5e-2, MXFP4 0.117; worst 2.9e-2, 0.100, 0.121).
fn weight_bound(format: TargetFormat) -> f64 {
    match format {
        TargetFormat::Fp8Block => 3.5e-2,
        TargetFormat::Nvfp4 => 0.12,
        TargetFormat::Mxfp4 => 0.14,
    }
}

fn quantize(src: &Path, dst: &Path, opts: &QuantizeOptions) -> moe_hf::QuantizeSummary {
    quantize_checkpoint(src, dst, opts, &mut |_| {}).unwrap_or_else(|e| panic!("quantize {}: {e}", src.display()))
}

/// bf16 fixtures covering every expert layout: per-expert `gate_proj` with shared experts
/// (deepseek_v3, qwen2_moe), Mixtral's `w1/w3/w2`, fused interleaved with biases (gpt_oss)
/// and fused halves (llama4).
const FAMILIES: [&str; 5] = [
    "deepseek_v3-bfloat16",
    "qwen2_moe-bfloat16",
    "mixtral-bfloat16",
    "gpt_oss-bfloat16",
    "llama4-bfloat16",
];

/// Whether the quantized kernels can load `format` for this fixture. The FP8 block method
/// (TensorRT-LLM's rule) needs each FC1 half to hold whole 128-row blocks (`I % 128 == 0`);
/// the bf16 fixtures have I = 32, so their FP8 block checkpoints (valid: partial edge blocks
/// are part of the format) run through the dequantized path here, and the quantized FP8 block
/// kernels are covered by the DeepSeek FP8 fixture (I = 128) and [`aligned_layer_runs_quantized`].
fn runs_quantized(format: TargetFormat, inter: usize) -> bool {
    format != TargetFormat::Fp8Block || inter.is_multiple_of(128)
}

/// Quantizes bf16 fixture `name` to `format`, loads it on `backend` (quantized where the
/// kernels take it, else dequantized at load) and returns the worst relative L2 error
/// against the fixture's oracle over T.
fn roundtrip(name: &str, format: TargetFormat, backend: &str) -> f64 {
    let s = Scratch::new(&format!("q-{name}-{format}-{backend}"));
    let out = s.path().join("q");
    quantize(&fixture(name), &out, &QuantizeOptions::new(format));
    let dequantize = !runs_quantized(format, 32);
    let opts = BlockOptions {
        backend: Some(backend.into()),
        dequantize,
        ..Default::default()
    };
    let mut block = MoeBlock::load(&out, 0, opts).unwrap_or_else(|e| panic!("{name} as {format}: load: {e}"));
    assert_eq!(block.checkpoint_quant(), format.checkpoint_quant());
    let mut worst = 0.0f64;
    for t in TOKENS {
        let x = io_tensor(&fixture(name), &format!("x_{t}"));
        let y = block
            .forward(&x)
            .unwrap_or_else(|e| panic!("{name} as {format} T={t}: {e}"));
        worst = worst.max(rel_l2(&y, &io_tensor(&fixture(name), &format!("y_{t}"))));
    }
    eprintln!("{name} as {format} [{backend}, dequantize={dequantize}]: worst relative L2 error {worst:.3e}");
    worst
}

fn check_format(format: TargetFormat) {
    let bound = quantized_bound(format);
    for name in FAMILIES {
        for backend in ["reference", "cpu"] {
            let err = roundtrip(name, format, backend);
            assert!(err <= bound, "{name} as {format} [{backend}]: {err:.3e} > {bound:.0e}");
        }
    }
}

#[test]
fn fp8_block_roundtrip_matches_bf16_oracle() {
    check_format(TargetFormat::Fp8Block);
}

#[test]
fn nvfp4_roundtrip_matches_bf16_oracle() {
    check_format(TargetFormat::Nvfp4);
}

#[test]
fn mxfp4_roundtrip_matches_bf16_oracle() {
    check_format(TargetFormat::Mxfp4);
}

/// Qwen3-30B-A3B-FP8's layout (`Qwen/Qwen3-30B-A3B-FP8` on the Hub): per expert
/// `mlp.experts.{e}.{gate,up,down}_proj.weight` e4m3 with `.weight_scale_inv` per 128x128 block,
/// the router in bf16, and `quantization_config` `{quant_method: fp8, fmt: e4m3,
/// activation_scheme: dynamic, weight_block_size: [128, 128]}`: what `quantize_checkpoint`
/// writes for the qwen3_moe fixture. It loads, and computes the transformers block's outputs
/// within the FP8 block bound, with the f32 scales as written and with the scales stored in
/// bf16 (as some of Qwen's FP8 releases store them).
#[test]
fn qwen3_moe_fp8_block_loads_in_the_qwen3_fp8_layout() {
    let name = "qwen3_moe-bfloat16";
    let s = Scratch::new("qwen3-fp8");
    let out = s.path().join("q");
    quantize(&fixture(name), &out, &QuantizeOptions::new(TargetFormat::Fp8Block));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "qwen3_moe");
    // The Hub's four keys (our writer adds `modules_to_not_convert`, which the release lacks).
    let hub_quant = serde_json::json!({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]});
    for (k, v) in hub_quant.as_object().unwrap() {
        assert_eq!(&cfg["quantization_config"][k], v, "quantization_config.{k}");
    }
    let ck = Checkpoint::open(&out).unwrap();
    for e in [0, 15] {
        let p = format!("model.layers.0.mlp.experts.{e}.");
        for (proj, shape) in [("gate_proj", [32, 64]), ("up_proj", [32, 64]), ("down_proj", [64, 32])] {
            assert_eq!(
                ck.info(&format!("{p}{proj}.weight")),
                Some((DType::F8E4M3, &shape[..])),
                "{p}{proj}"
            );
            // H = 64, I = 32: one partial 128x128 block per projection.
            assert_eq!(
                ck.info(&format!("{p}{proj}.weight_scale_inv")),
                Some((DType::F32, &[1, 1][..]))
            );
        }
    }
    assert_eq!(
        ck.info("model.layers.0.mlp.gate.weight"),
        Some((DType::BF16, &[16, 64][..])),
        "the router stays in bf16"
    );
    drop(ck);
    let bound = quantized_bound(TargetFormat::Fp8Block);
    for backend in ["reference", "cpu"] {
        let err = roundtrip(name, TargetFormat::Fp8Block, backend);
        assert!(err <= bound, "{name} as fp8-block [{backend}]: {err:.3e} > {bound:.0e}");
    }

    // The same checkpoint with every `weight_scale_inv` rounded to bf16 and the Hub's
    // `quantization_config` verbatim.
    let bf16_scales = s.path().join("q-bf16-scales");
    std::fs::create_dir_all(&bf16_scales).unwrap();
    let mut hub_cfg = cfg.clone();
    hub_cfg["quantization_config"] = hub_quant;
    std::fs::write(
        bf16_scales.join("config.json"),
        serde_json::to_string_pretty(&hub_cfg).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).expect("one model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut converted = 0;
    for (n, v) in st.tensors() {
        if n.ends_with(".weight_scale_inv") {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            let f: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let t = Tensor::from_f32_as(DType::BF16, v.shape().to_vec(), &f).unwrap();
            tensors.push((
                n,
                safetensors::Dtype::BF16,
                v.shape().to_vec(),
                t.view().unwrap().data.into_owned(),
            ));
            converted += 1;
        } else {
            tensors.push((n, v.dtype(), v.shape().to_vec(), v.data().to_vec()));
        }
    }
    assert_eq!(converted, 16 * 3);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, shape, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        bf16_scales.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let ck = Checkpoint::open(&bf16_scales).unwrap();
    assert_eq!(
        ck.info("model.layers.0.mlp.experts.3.down_proj.weight_scale_inv"),
        Some((DType::BF16, &[1, 1][..]))
    );
    drop(ck);
    for backend in ["reference", "cpu"] {
        let opts = |dir: &Path| {
            MoeBlock::load(
                dir,
                0,
                BlockOptions {
                    backend: Some(backend.into()),
                    dequantize: !runs_quantized(TargetFormat::Fp8Block, 32),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        };
        let (mut f32_scales, mut rounded) = (opts(&out), opts(&bf16_scales));
        for t in TOKENS {
            let x = io_tensor(&fixture(name), &format!("x_{t}"));
            let y = rounded.forward(&x).unwrap();
            let err = rel_l2(&y, &io_tensor(&fixture(name), &format!("y_{t}")));
            // bf16 scales move each block by at most 2^-9 relative: the f32-scale run's output
            // within a few 1e-3.
            let shift = rel_l2(&y, &f32_scales.forward(&x).unwrap());
            eprintln!(
                "{name} fp8-block, bf16 scales [{backend}] T={t}: vs oracle {err:.3e}, vs f32 scales {shift:.3e}"
            );
            assert!(err <= bound, "bf16 scales [{backend}] T={t}: {err:.3e} > {bound:.0e}");
            assert!(
                shift <= 1e-2,
                "bf16 scales [{backend}] T={t}: {shift:.3e} from the f32-scale run"
            );
        }
    }
}

/// The written tensors decode (through the loader's canonical names) to the float weights
/// within the format's rounding, for every family layout: a row of the wrong expert, gate/up
/// swapped or de-interleaved, or a misplaced scale shows as an error near 1.4, not 0.1.
#[test]
fn written_weights_decode_to_the_float_weights() {
    use moe_core::WeightSource;
    use moe_hf::{BlockNames, ExpertSource, HfConfig};
    for name in FAMILIES {
        for format in TargetFormat::ALL {
            let s = Scratch::new(&format!("w-{name}-{format}"));
            let out = s.path().join("q");
            quantize(&fixture(name), &out, &QuantizeOptions::new(format));
            let hf = HfConfig::from_dir(&out).unwrap();
            let (e, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);
            let (qc, fc) = (
                Checkpoint::open(&out).unwrap(),
                Checkpoint::open(fixture(name)).unwrap(),
            );
            let (qn, fnames) = (
                BlockNames::resolve(hf.family, 0, &qc).unwrap(),
                BlockNames::resolve(hf.family, 0, &fc).unwrap(),
            );
            let quantized = ExpertSource::new(&qc, &qn, e, h, i)
                .with_quant(hf.checkpoint_quant().unwrap())
                .with_dequantize(true);
            let float = ExpertSource::new(&fc, &fnames, e, h, i);
            let mut worst = 0.0f64;
            for x in 0..e {
                for w in ["w1", "w3", "w2"] {
                    let n = format!("{x}.{w}.weight");
                    let a = quantized.get(&n).unwrap().unwrap().to_tensor(&n).unwrap();
                    let b = float.get(&n).unwrap().unwrap().to_tensor(&n).unwrap();
                    worst = worst.max(rel_l2(&a, &b));
                }
            }
            let bound = weight_bound(format);
            eprintln!("{name} as {format}: worst weight error {worst:.3e}");
            assert!(
                worst <= bound,
                "{name} as {format}: weight error {worst:.3e} > {bound:.0e}"
            );
        }
    }
}

/// On a layer whose shapes every quantized kernel takes (E = 8, H = 256, I = 128), each
/// format's quantized run stays within its bound of the float layer (our unquantized path,
/// itself checked against transformers), and within the activation-quantization error of its
/// own dequantized run.
#[test]
fn aligned_layer_runs_quantized() {
    let s = Scratch::new("aligned");
    let src = s.path().join("mixtral-aligned");
    write_mixtral(&src, 8, 256, 128, 5);
    let x = {
        let v: Vec<f32> = (0..64 * 256)
            .map(|k| ((k * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.7)
            .collect();
        Tensor::from_f32_as(DType::BF16, vec![64, 256], &v).unwrap()
    };
    let y_float = MoeBlock::load(&src, 0, BlockOptions::default())
        .unwrap()
        .forward(&x)
        .unwrap();
    for format in TargetFormat::ALL {
        let out = s.path().join(format.name());
        quantize(&src, &out, &QuantizeOptions::new(format));
        for backend in ["reference", "cpu"] {
            let run = |dequantize| {
                let opts = BlockOptions {
                    backend: Some(backend.into()),
                    dequantize,
                    ..Default::default()
                };
                MoeBlock::load(&out, 0, opts)
                    .unwrap_or_else(|e| panic!("{format} [{backend}]: {e}"))
                    .forward(&x)
                    .unwrap()
            };
            let (yq, yd) = (run(false), run(true));
            let (err, act) = (rel_l2(&yq, &y_float), rel_l2(&yq, &yd));
            eprintln!("aligned {format} [{backend}]: vs float {err:.3e}, vs dequantized {act:.3e}");
            assert!(err <= quantized_bound(format), "{format} [{backend}]: {err:.3e}");
            // Activation quantization alone: none for MXFP4 (W4A16), 1x128 FP8 groups, NVFP4 16-blocks.
            let act_bound = match format {
                TargetFormat::Mxfp4 => 1e-2,
                TargetFormat::Fp8Block => 5e-2,
                TargetFormat::Nvfp4 => 0.25,
            };
            assert!(
                act <= act_bound,
                "{format} [{backend}]: quantized vs dequantized {act:.3e} > {act_bound:.0e}"
            );
        }
    }
}

#[test]
fn written_layouts_are_the_formats_real_ones() {
    let s = Scratch::new("layouts");
    let gpt = s.path().join("gpt-mxfp4");
    let summary = quantize(
        &fixture("gpt_oss-bfloat16"),
        &gpt,
        &QuantizeOptions::new(TargetFormat::Mxfp4),
    );
    assert_eq!(summary.layout, "fused-blocks");
    let ck = Checkpoint::open(&gpt).unwrap();
    let p = "model.layers.0.mlp.experts.";
    assert_eq!(
        ck.info(&format!("{p}gate_up_proj_blocks")),
        Some((DType::U8, &[8, 64, 2, 16][..]))
    );
    assert_eq!(
        ck.info(&format!("{p}gate_up_proj_scales")),
        Some((DType::U8, &[8, 64, 2][..]))
    );
    assert_eq!(
        ck.info(&format!("{p}down_proj_blocks")),
        Some((DType::U8, &[8, 64, 1, 16][..]))
    );
    assert!(ck.contains(&format!("{p}gate_up_proj_bias")) && !ck.contains(&format!("{p}gate_up_proj")));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "mxfp4");

    let ds = s.path().join("ds-fp8");
    quantize(
        &fixture("deepseek_v3-bfloat16"),
        &ds,
        &QuantizeOptions::new(TargetFormat::Fp8Block),
    );
    let ck = Checkpoint::open(&ds).unwrap();
    let p = "model.layers.0.mlp.experts.3.";
    assert_eq!(
        ck.info(&format!("{p}gate_proj.weight")),
        Some((DType::F8E4M3, &[32, 64][..]))
    );
    // H = 64, I = 32: one partial 128x128 block per projection.
    assert_eq!(
        ck.info(&format!("{p}down_proj.weight_scale_inv")),
        Some((DType::F32, &[1, 1][..]))
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ds.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization_config"];
    assert_eq!(
        (q["quant_method"].as_str(), q["activation_scheme"].as_str()),
        (Some("fp8"), Some("dynamic"))
    );
    assert_eq!(q["weight_block_size"], serde_json::json!([128, 128]));
    // Non-expert tensors are copied byte for byte (shared experts, router, attention).
    let src = Checkpoint::open(fixture("deepseek_v3-bfloat16")).unwrap();
    for name in [
        "model.layers.0.mlp.shared_experts.up_proj.weight",
        "model.layers.0.mlp.gate.weight",
        "lm_head.weight",
    ] {
        assert_eq!(ck.raw(name).unwrap(), src.raw(name).unwrap(), "{name} copied unchanged");
    }

    let gpt_nv = s.path().join("gpt-nvfp4");
    let summary = quantize(
        &fixture("gpt_oss-bfloat16"),
        &gpt_nv,
        &QuantizeOptions::new(TargetFormat::Nvfp4),
    );
    assert_eq!(summary.layout, "per-expert");
    let ck = Checkpoint::open(&gpt_nv).unwrap();
    let p = "model.layers.0.mlp.experts.5.";
    assert_eq!(ck.info(&format!("{p}up_proj.weight")), Some((DType::U8, &[32, 32][..])));
    assert_eq!(
        ck.info(&format!("{p}up_proj.weight_scale")),
        Some((DType::F8E4M3, &[32, 4][..]))
    );
    assert_eq!(
        ck.info(&format!("{p}up_proj.weight_scale_2")).map(|(d, _)| d),
        Some(DType::F32)
    );
    assert_eq!(
        ck.info(&format!("{p}down_proj.input_scale")).map(|(d, _)| d),
        Some(DType::F32)
    );
    assert_eq!(
        ck.info(&format!("{p}up_proj.bias")),
        Some((DType::BF16, &[32][..])),
        "fused biases split per expert"
    );
    // FC1's halves share one global scale.
    assert_eq!(
        ck.raw(&format!("{p}gate_proj.weight_scale_2")).unwrap().2,
        ck.raw(&format!("{p}up_proj.weight_scale_2")).unwrap().2
    );
    assert!(gpt_nv.join("hf_quant_config.json").is_file());
}

#[test]
fn sharded_output_loads_through_its_index() {
    let s = Scratch::new("sharded-out");
    let out = s.path().join("q");
    let opts = QuantizeOptions {
        max_shard_bytes: 16 << 10,
        ..QuantizeOptions::new(TargetFormat::Fp8Block)
    };
    let summary = quantize(&fixture("qwen2_moe-bfloat16"), &out, &opts);
    assert!(
        summary.files.len() > 2 && out.join("model.safetensors.index.json").is_file(),
        "{:?}",
        summary.files
    );
    let mut b = MoeBlock::load(
        &out,
        0,
        BlockOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = fixture("qwen2_moe-bfloat16");
    let err = rel_l2(
        &b.forward(&io_tensor(&dir, "x_130")).unwrap(),
        &io_tensor(&dir, "y_130"),
    );
    assert!(err <= quantized_bound(TargetFormat::Fp8Block), "{err:.3e}");
}

#[test]
fn refusals_are_typed_and_write_nothing() {
    let s = Scratch::new("refusals");
    // Already quantized input.
    let out = s.path().join("a");
    let e = quantize_checkpoint(
        &quant_fixture("gpt_oss-mxfp4"),
        &out,
        &QuantizeOptions::new(TargetFormat::Nvfp4),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, MoeError::UnsupportedModel { .. }) && e.to_string().contains("already quantized"),
        "{e}"
    );
    assert!(!out.join("config.json").exists());
    // Non-empty output directory.
    let busy = s.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "x").unwrap();
    let e = quantize_checkpoint(
        &fixture("olmoe-bfloat16"),
        &busy,
        &QuantizeOptions::new(TargetFormat::Mxfp4),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, MoeError::Io { .. }) && e.to_string().contains("not empty"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(busy.join("keep.txt")).unwrap(), "x");
}

#[test]
fn ragged_input_dimension_is_refused_naming_the_tensor() {
    // Mixtral with I = 24: w2's input dimension holds neither 32-blocks (MXFP4) nor 16-blocks
    // (NVFP4); FP8 128-blocks may be partial, so FP8 block accepts it.
    let s = Scratch::new("ragged");
    let src = s.path().join("mixtral-i24");
    write_mixtral(&src, 8, 64, 24, 7);
    for format in [TargetFormat::Mxfp4, TargetFormat::Nvfp4] {
        let out = s.path().join(format.name());
        let e = quantize_checkpoint(&src, &out, &QuantizeOptions::new(format), &mut |_| {}).unwrap_err();
        assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{format}: {e:?}");
        let msg = e.to_string();
        let multiple = if format == TargetFormat::Mxfp4 {
            "multiple of 32"
        } else {
            "multiple of 16"
        };
        assert!(
            msg.contains("block_sparse_moe.experts.0.w2.weight") && msg.contains(multiple),
            "{msg}"
        );
        assert!(!out.join("model.safetensors").exists(), "{format}: nothing written");
    }
    let out = s.path().join("fp8");
    quantize(&src, &out, &QuantizeOptions::new(TargetFormat::Fp8Block));
    MoeBlock::load(
        &out,
        0,
        BlockOptions {
            dequantize: true,
            ..Default::default()
        },
    )
    .unwrap();
}

// --- memory ---------------------------------------------------------------------------------

/// Resident bytes of the loaded layer's expert slots vs the expert tensors' bytes on disk.
fn memory(dir: &Path, backend: &str) -> (usize, usize) {
    let b = MoeBlock::load(
        dir,
        0,
        BlockOptions {
            backend: Some(backend.into()),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (b.expert_resident_bytes(), b.expert_disk_bytes())
}

fn assert_within_10pct(what: &str, resident: usize, disk: usize) {
    let ratio = resident as f64 / disk as f64;
    eprintln!("memory {what}: resident {resident} B, on disk {disk} B, ratio {ratio:.3}");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: resident {resident} B vs {disk} B on disk (ratio {ratio:.3})"
    );
}

#[test]
fn resident_size_of_quantized_fixtures_matches_disk() {
    for name in ["deepseek_v3-fp8block", "gpt_oss-mxfp4"] {
        for backend in ["reference", "cpu"] {
            let (r, d) = memory(&quant_fixture(name), backend);
            assert_within_10pct(&format!("{name} [{backend}]"), r, d);
        }
    }
}

#[test]
fn resident_size_of_a_larger_quantized_layer_matches_disk() {
    // E = 8, H = 1024, I = 512: 25 MB of bf16 experts, quantized by us to every format.
    let s = Scratch::new("memory-large");
    let src = s.path().join("mixtral-large");
    write_mixtral(&src, 8, 1024, 512, 11);
    for format in TargetFormat::ALL {
        let out = s.path().join(format.name());
        let summary = quantize(&src, &out, &QuantizeOptions::new(format));
        let (r, d) = memory(&out, "cpu");
        assert_eq!(d, summary.expert_bytes_out);
        eprintln!(
            "{format}: bf16 experts {} B -> {} B on disk",
            summary.expert_bytes_in, summary.expert_bytes_out
        );
        assert_within_10pct(&format!("mixtral E=8 H=1024 I=512 {format}"), r, d);
    }
}

/// Writes a one-layer bf16 Mixtral checkpoint with `e` experts, hidden `h`, intermediate `i`
/// and seeded random weights (a router scaled so routing is decisive).
pub fn write_mixtral(dir: &Path, e: usize, h: usize, i: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": h,
        "intermediate_size": i, "num_local_experts": e, "num_experts_per_tok": 2,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 32, "dtype": "bfloat16", "hidden_act": "silu",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut normal = move || {
        // Sum of 4 uniforms: a cheap, deterministic, roughly normal value with unit variance.
        let mut acc = 0.0f32;
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            acc += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        acc * 3f32.sqrt()
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut bf16 = |name: String, shape: Vec<usize>, scale: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| normal() * scale).collect();
        let t = Tensor::from_f32_as(DType::BF16, shape.clone(), &v).unwrap();
        tensors.push((name, shape, t.view().unwrap().data.into_owned()));
    };
    let p = "model.layers.0.block_sparse_moe.";
    bf16(format!("{p}gate.weight"), vec![e, h], 1.0 / (h as f32).sqrt() * 4.0);
    for x in 0..e {
        bf16(format!("{p}experts.{x}.w1.weight"), vec![i, h], 1.0 / (h as f32).sqrt());
        bf16(format!("{p}experts.{x}.w3.weight"), vec![i, h], 1.0 / (h as f32).sqrt());
        bf16(format!("{p}experts.{x}.w2.weight"), vec![h, i], 1.0 / (i as f32).sqrt());
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}
