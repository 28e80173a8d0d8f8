//! Quantized checkpoints: the `hf-quant` transformers fixtures (DeepSeek-V3 FP8 block,
//! GPT-OSS MXFP4) through the quantized layer on both backends, and through the dequantized
//! reference path; the typed errors of checkpoints that contradict their `quantization_config`;
//! the resident size of a loaded quantized layer against its packed size on disk.

use std::path::{Path, PathBuf};

use moe_core::{DType, MoeError};
use moe_hf::{BlockOptions, CheckpointQuant, MoeBlock};

use crate::common::{BACKENDS, FixtureRoot, Scratch, TOKENS, io_tensor, rel_l2};

/// Vendored quantized fixtures (never `/work/shared`), or `$MOE_FIXTURES_DIR/hf-quant`.
pub const QUANT_FIXTURES: FixtureRoot = FixtureRoot {
    sub: "hf-quant",
    vendored: concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf-quant"),
};

pub fn quant_fixture(name: &str) -> PathBuf {
    QUANT_FIXTURES.path().join(name)
}

/// `fixtures/hf-quant/README.md`: DeepSeek FP8 block ≤ 5e-2 with activation quantization
/// (1×128 dynamic groups), ≤ 3e-2 weight-only; GPT-OSS MXFP4 (W4A16) ≤ 3e-2.
fn tolerance(name: &str, dequantized: bool) -> f64 {
    match name {
        "deepseek_v3-fp8block" if !dequantized => 5e-2,
        _ => 3e-2,
    }
}

fn opts(backend: &str, dequantize: bool) -> BlockOptions {
    BlockOptions {
        backend: Some(backend.into()),
        dequantize,
        ..Default::default()
    }
}

/// Worst relative L2 error of `name` over T and both backends.
fn check(name: &str, dequantize: bool) -> f64 {
    let dir = quant_fixture(name);
    let tol = tolerance(name, dequantize);
    let mut worst = 0.0f64;
    for backend in BACKENDS {
        let mut block = MoeBlock::load(&dir, 0, opts(backend, dequantize))
            .unwrap_or_else(|e| panic!("{name} [{backend}, dequantize={dequantize}] load: {e}"));
        for t in TOKENS {
            let x = io_tensor(&dir, &format!("x_{t}"));
            let y = block
                .forward(&x)
                .unwrap_or_else(|e| panic!("{name} [{backend}] T={t}: {e}"));
            assert_eq!(y.dtype(), DType::BF16, "{name}: output in the model dtype");
            let err = rel_l2(&y, &io_tensor(&dir, &format!("y_{t}")));
            eprintln!("{name} [{backend}, dequantize={dequantize}] T={t}: relative L2 error {err:.3e}");
            assert!(
                err <= tol,
                "{name} [{backend}, dequantize={dequantize}] T={t}: relative L2 error {err:.3e} > {tol:.0e}"
            );
            worst = worst.max(err);
        }
    }
    worst
}

#[test]
fn deepseek_fp8_block_matches_oracle() {
    check("deepseek_v3-fp8block", false);
}

#[test]
fn gpt_oss_mxfp4_matches_oracle() {
    check("gpt_oss-mxfp4", false);
}

#[test]
fn deepseek_fp8_block_dequantized_matches_oracle() {
    check("deepseek_v3-fp8block", true);
}

#[test]
fn gpt_oss_mxfp4_dequantized_matches_oracle() {
    check("gpt_oss-mxfp4", true);
}

#[test]
fn fixtures_declare_their_formats() {
    let b = MoeBlock::load(quant_fixture("gpt_oss-mxfp4"), 0, opts("reference", true)).unwrap();
    assert_eq!(b.checkpoint_quant(), CheckpointQuant::Mxfp4);
    let b = MoeBlock::load(quant_fixture("deepseek_v3-fp8block"), 0, opts("reference", true)).unwrap();
    assert_eq!(b.checkpoint_quant(), CheckpointQuant::Fp8Block { block: [128, 128] });
    assert_eq!(
        b.shared_intermediate_size(),
        Some(128),
        "FP8 shared expert dequantized at load"
    );
}

// --- checkpoints that contradict their config ----------------------------------------------

fn load_err(dir: &Path) -> MoeError {
    match MoeBlock::load(dir, 0, opts("reference", false)) {
        Ok(_) => panic!("{} must be refused", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_weight_scale_inv_is_named() {
    let s = Scratch::copy_from(&quant_fixture("deepseek_v3-fp8block"), "fp8-missing-scale");
    let gone = "model.layers.0.mlp.experts.5.down_proj.weight_scale_inv";
    s.edit_model(|t| t.retain(|(n, ..)| n != gone));
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains(gone), "{e}");
}

#[test]
fn wrong_scale_shape_is_named() {
    let s = Scratch::copy_from(&quant_fixture("deepseek_v3-fp8block"), "fp8-scale-shape");
    let bad = "model.layers.0.mlp.experts.2.gate_proj.weight_scale_inv";
    s.edit_model(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == bad).unwrap();
        // [1, 2] -> [2, 1]: same bytes, transposed block grid.
        entry.2 = vec![2, 1];
    });
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(bad) && e.to_string().contains("[1, 2]"), "{e}");
}

#[test]
fn bf16_experts_in_an_fp8_config_are_refused() {
    let s = Scratch::copy_from(&quant_fixture("deepseek_v3-fp8block"), "fp8-bf16-experts");
    let bad = "model.layers.0.mlp.experts.0.up_proj.weight";
    s.edit_model(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == bad).unwrap();
        // e4m3 bytes reinterpreted as half as many bf16 values would not fit the shape: write
        // a genuine bf16 [128, 256] tensor of zeros.
        entry.1 = safetensors::Dtype::BF16;
        entry.3 = vec![0; entry.2.iter().product::<usize>() * 2];
    });
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::DTypeMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(bad) && msg.contains("FP8 block") && msg.contains("f8e4m3"),
        "{msg}"
    );
}

#[test]
fn fp8_experts_without_quantization_config_are_refused() {
    let s = Scratch::copy_from(&quant_fixture("deepseek_v3-fp8block"), "fp8-no-config");
    s.edit_config(|c| {
        c.remove("quantization_config");
    });
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::DTypeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("no quantization_config"), "{e}");
}

#[test]
fn mxfp4_config_over_bf16_experts_is_named() {
    // The bf16 GPT-OSS fixture under an MXFP4 config: the blocks the config promises are absent.
    let s = Scratch::copy_of("gpt_oss-bfloat16", "mxfp4-over-bf16");
    s.edit_config(|c| {
        c.insert(
            "quantization_config".into(),
            serde_json::json!({"quant_method": "mxfp4"}),
        );
    });
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("gate_up_proj_blocks") && msg.contains("instead"), "{msg}");
}

#[test]
fn wrong_mxfp4_scales_shape_is_named() {
    let s = Scratch::copy_from(&quant_fixture("gpt_oss-mxfp4"), "mxfp4-scales");
    let bad = "model.layers.0.mlp.experts.down_proj_scales";
    s.edit_model(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == bad).unwrap();
        entry.2 = vec![8, 128, 8];
    });
    let e = load_err(s.path());
    assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(bad), "{e}");
}

#[test]
fn fp8_router_is_refused() {
    // The router stays float in every supported format.
    let s = Scratch::copy_from(&quant_fixture("deepseek_v3-fp8block"), "fp8-router");
    let router = "model.layers.0.mlp.gate.weight";
    s.edit_model(|t| {
        let entry = t.iter_mut().find(|(n, ..)| n == router).unwrap();
        entry.1 = safetensors::Dtype::F8_E4M3;
        entry.3 = vec![0x38; entry.2.iter().product::<usize>()];
    });
    let e = load_err(s.path());
    assert!(e.to_string().contains(router), "{e}");
}

// --- layouts without a transformers fixture: built from the canonical quantizers ----------

/// Rewrites bf16 fixture `name` with its routed experts replaced by `experts(real_prefix,
/// e, proj_name, w [out, in], out, in)` -> tensors (real names), and `quantization_config`.
fn requantized(
    name: &str,
    tag: &str,
    quantization_config: serde_json::Value,
    experts: impl Fn(&str, &[f32], usize, usize) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) -> Scratch {
    use moe_core::WeightSource;
    let s = Scratch::copy_of(name, tag);
    let hf = moe_hf::HfConfig::from_dir(s.path()).unwrap();
    let ck = moe_hf::Checkpoint::open(s.path()).unwrap();
    let names = moe_hf::BlockNames::resolve(hf.family, 0, &ck).unwrap();
    let (e_n, h, i) = (hf.num_experts, hf.hidden_size, hf.expert_intermediate_size);
    let src = moe_hf::ExpertSource::new(&ck, &names, e_n, h, i);
    let mut new = Vec::new();
    let mut gone = Vec::new();
    for e in 0..e_n {
        for (w, out, inp) in [("w1", i, h), ("w3", i, h), ("w2", h, i)] {
            let canon = format!("{e}.{w}.weight");
            let real = src.real_name(&canon).unwrap();
            let v = src.get(&canon).unwrap().unwrap().to_f32_vec(&canon).unwrap();
            new.extend(experts(real.strip_suffix("weight").unwrap(), &v, out, inp));
            gone.push(real);
        }
    }
    drop(ck);
    s.edit_model(|t| {
        t.retain(|(n, ..)| !gone.contains(n));
        t.extend(new);
    });
    s.edit_config(|c| {
        c.insert("quantization_config".into(), quantization_config);
    });
    s
}

fn st_bytes(t: &moe_core::Tensor) -> Vec<u8> {
    t.view().unwrap().data.into_owned()
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::I8 => safetensors::Dtype::I8,
        DType::I32 => safetensors::Dtype::I32,
        DType::F8E4M3 => safetensors::Dtype::F8_E4M3,
        _ => safetensors::Dtype::U8,
    }
}

/// Canonical tensors under `{prefix}{suffix}`, as stored by ModelOpt and friends.
fn canonical(
    prefix: &str,
    q: moe_quant::quantize::Quantized,
) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    q.into_iter()
        .map(|(s, t)| {
            (
                format!("{prefix}{s}"),
                st_dtype(t.dtype()),
                t.shape().to_vec(),
                st_bytes(&t),
            )
        })
        .collect()
}

fn worst_error(dir: &Path, oracle: &str, backend: &str) -> f64 {
    let mut b = MoeBlock::load(dir, 0, opts(backend, false)).unwrap_or_else(|e| panic!("{oracle} [{backend}]: {e}"));
    let fx = crate::common::fixture(oracle);
    TOKENS
        .iter()
        .map(|t| {
            rel_l2(
                &b.forward(&io_tensor(&fx, &format!("x_{t}"))).unwrap(),
                &io_tensor(&fx, &format!("y_{t}")),
            )
        })
        .fold(0.0, f64::max)
}

/// ModelOpt FP8 per-tensor (`weight` e4m3, `weight_scale`, `input_scale`) on per-expert names.
#[test]
fn modelopt_fp8_per_tensor_loads() {
    let s = requantized(
        "qwen3_moe-bfloat16",
        "modelopt-fp8",
        serde_json::json!({"quant_method": "modelopt", "quant_algo": "FP8"}),
        // Static activation scales, as ModelOpt calibrates them: the fixture inputs stay under
        // 5 in magnitude and the experts' activation outputs under 40 (a clipped activation
        // would show as a large error, an oversized scale as a small one).
        |p, w, out, inp| {
            let input_amax = if p.ends_with("down_proj.") { 40.0 } else { 5.0 };
            canonical(
                p,
                moe_quant::quantize::fp8_per_tensor(w, out, inp, None, input_amax).unwrap(),
            )
        },
    );
    assert_eq!(
        moe_hf::HfConfig::from_dir(s.path())
            .unwrap()
            .checkpoint_quant()
            .unwrap(),
        CheckpointQuant::Fp8PerTensor
    );
    // Weight-only (the loader's part): FP8 rounding of three GEMMs' weights.
    let mut b = MoeBlock::load(s.path(), 0, opts("cpu", true)).unwrap();
    let fx = crate::common::fixture("qwen3_moe-bfloat16");
    for t in TOKENS {
        let err = rel_l2(
            &b.forward(&io_tensor(&fx, &format!("x_{t}"))).unwrap(),
            &io_tensor(&fx, &format!("y_{t}")),
        );
        assert!(err <= 8e-2, "dequantized T={t}: {err:.3e}");
    }
    for backend in BACKENDS {
        let err = worst_error(s.path(), "qwen3_moe-bfloat16", backend);
        eprintln!("qwen3_moe as ModelOpt FP8 [{backend}]: worst relative L2 error {err:.3e}");
        // Plus static per-tensor FP8 activations on both GEMM inputs and the requantization of
        // FC1's halves to their common scale (measured 0.115 at T = 1).
        assert!(err <= 0.15, "{err:.3e}");
    }
}

/// INT8 weight-only in the canonical layout (`quant_algo: W8A16`).
#[test]
fn int8_weight_only_loads() {
    let s = requantized(
        "olmoe-bfloat16",
        "int8",
        serde_json::json!({"quant_method": "modelopt", "quant_algo": "W8A16"}),
        |p, w, out, inp| canonical(p, moe_quant::quantize::int8_channel(w, out, inp).unwrap()),
    );
    for backend in BACKENDS {
        let err = worst_error(s.path(), "olmoe-bfloat16", backend);
        eprintln!("olmoe as INT8 [{backend}]: worst relative L2 error {err:.3e}");
        assert!(err <= 3e-2, "{err:.3e}");
    }
}

/// AutoAWQ GEMM packing: `qweight` i32 `[in, out/8]` and `qzeros` i32 `[in/g, out/8]` with
/// nibble order 0,2,4,6,1,3,5,7, `scales` f16 `[in/g, out]`.
fn awq_pack(
    prefix: &str,
    w: &[f32],
    out: usize,
    inp: usize,
    group: usize,
) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let q = moe_quant::quantize::int4_group(w, out, inp, group).unwrap();
    let get = |s: &str| q.iter().find(|(x, _)| *x == s).unwrap().1.clone();
    let (codes, scales, zeros) = (get("weight"), get("weight_scale"), get("weight_zero"));
    let codes = codes.as_bytes("codes").unwrap();
    let code = |n: usize, k: usize| u32::from((codes[n * (inp / 2) + k / 2] >> (4 * (k % 2))) & 0xF);
    let zeros = zeros.as_bytes("zeros").unwrap();
    let order = moe_hf::quant_format::AWQ_ORDER;
    let pack = |rows: usize, at: &dyn Fn(usize, usize) -> u32| -> Vec<u8> {
        let mut v = Vec::new();
        for r in 0..rows {
            for word in 0..out / 8 {
                let x = (0..8).fold(0u32, |acc, i| acc | (at(8 * word + order[i], r) << (4 * i)));
                v.extend(x.to_le_bytes());
            }
        }
        v
    };
    let groups = inp / group;
    let qweight = pack(inp, &|n, k| code(n, k));
    let qzeros = pack(groups, &|n, g| u32::from(zeros[n * groups + g]));
    let s = scales.as_f32("scales").unwrap();
    let st: Vec<u8> = (0..groups)
        .flat_map(|g| (0..out).map(move |n| (g, n)))
        .flat_map(|(g, n)| half::f16::from_f32(s[n * groups + g]).to_le_bytes())
        .collect();
    vec![
        (
            format!("{prefix}qweight"),
            safetensors::Dtype::I32,
            vec![inp, out / 8],
            qweight,
        ),
        (
            format!("{prefix}qzeros"),
            safetensors::Dtype::I32,
            vec![groups, out / 8],
            qzeros,
        ),
        (
            format!("{prefix}scales"),
            safetensors::Dtype::F16,
            vec![groups, out],
            st,
        ),
    ]
}

#[test]
fn awq_int4_unpacks_to_the_canonical_codes() {
    use moe_core::WeightSource;
    let group = 32;
    let cfg = serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm", "zero_point": true});
    let s = requantized("mixtral-bfloat16", "awq", cfg, |p, w, out, inp| {
        awq_pack(p, w, out, inp, group)
    });
    let hf = moe_hf::HfConfig::from_dir(s.path()).unwrap();
    assert_eq!(hf.checkpoint_quant().unwrap(), CheckpointQuant::Int4Awq { group });
    // The served canonical tensors are the quantizer's, bit for bit (scales rounded to f16).
    let ck = moe_hf::Checkpoint::open(s.path()).unwrap();
    let names = moe_hf::BlockNames::resolve(hf.family, 0, &ck).unwrap();
    let src = moe_hf::ExpertSource::new(&ck, &names, 8, 64, 32).with_quant(hf.checkpoint_quant().unwrap());
    let fck = moe_hf::Checkpoint::open(crate::common::fixture("mixtral-bfloat16")).unwrap();
    let fnames = moe_hf::BlockNames::resolve(hf.family, 0, &fck).unwrap();
    let float = moe_hf::ExpertSource::new(&fck, &fnames, 8, 64, 32);
    for (canon, out, inp) in [("5.w3", 32, 64), ("2.w2", 64, 32)] {
        let w = float
            .get(&format!("{canon}.weight"))
            .unwrap()
            .unwrap()
            .to_f32_vec(canon)
            .unwrap();
        let q = moe_quant::quantize::int4_group(&w, out, inp, group).unwrap();
        let get = |s: &str| q.iter().find(|(x, _)| *x == s).unwrap().1.clone();
        let served = |s: &str| src.get(&format!("{canon}.{s}")).unwrap().unwrap();
        assert_eq!(
            served("weight").data.as_ref(),
            get("weight").as_bytes("w").unwrap(),
            "{canon} codes"
        );
        assert_eq!(served("weight").shape, vec![out, inp / 2]);
        assert_eq!(
            served("weight_zero").data.as_ref(),
            get("weight_zero").as_bytes("z").unwrap(),
            "{canon} zeros"
        );
        let scales: Vec<f32> = get("weight_scale")
            .as_f32("s")
            .unwrap()
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(
            served("weight_scale").to_f32_vec("s").unwrap(),
            scales,
            "{canon} scales"
        );
    }
    drop(ck);
    for backend in BACKENDS {
        let err = worst_error(s.path(), "mixtral-bfloat16", backend);
        eprintln!("mixtral as AWQ INT4 g{group} [{backend}]: worst relative L2 error {err:.3e}");
        assert!(err <= 0.15, "{err:.3e}");
    }
}

#[test]
fn gptq_is_refused_naming_the_packing() {
    let s = Scratch::copy_of("mixtral-bfloat16", "gptq");
    s.edit_config(|c| {
        c.insert(
            "quantization_config".into(),
            serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 32}),
        );
    });
    let e = load_err(s.path());
    assert!(
        matches!(e, MoeError::UnsupportedModel { .. }) && e.to_string().contains("gptq"),
        "{e}"
    );
}
