//! The transformers oracle: every family × dtype × T, on both backends, with chunk limits
//! 1, 16 and unlimited; the chunk limits must agree with each other within f32 tolerance.

use moe_hf::{BlockOptions, MoeBlock};

use crate::common::{BACKENDS, TOKENS, fixture, io_tensor, rel_l2, tolerance};

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let tol = tolerance(name);
    // Chunks must agree within f32 tolerance. A bf16 output is rounded after f32
    // accumulation whose order may depend on how many rows a GEMM sees (the cpu backend picks
    // kernels by size), so one element can land one bf16 ulp away (~4e-5 relative L2 on
    // these 130×64 outputs): allow a few such flips, still 30× tighter than the oracle bound.
    let chunk_tol = if name.ends_with("bfloat16") { 1e-3 } else { 1e-5 };
    let mut worst = 0.0f64;
    for backend in BACKENDS {
        let mut blocks: Vec<(Option<usize>, MoeBlock)> = [Some(1), Some(16), None]
            .into_iter()
            .map(|chunk| {
                let opts = BlockOptions {
                    backend: Some(backend.into()),
                    max_tokens_per_chunk: chunk,
                    ..Default::default()
                };
                let b = MoeBlock::load(&dir, 0, opts).unwrap_or_else(|e| panic!("{name} [{backend}] load: {e}"));
                (chunk, b)
            })
            .collect();
        for t in TOKENS {
            let x = io_tensor(&dir, &format!("x_{t}"));
            let y_ref = io_tensor(&dir, &format!("y_{t}"));
            let mut outs = Vec::new();
            for (chunk, block) in &mut blocks {
                let y = block
                    .forward(&x)
                    .unwrap_or_else(|e| panic!("{name} [{backend}] T={t} chunk={chunk:?}: {e}"));
                assert_eq!(y.dtype(), x.dtype(), "{name}: output dtype");
                let err = rel_l2(&y, &y_ref);
                worst = worst.max(err);
                assert!(
                    err <= tol,
                    "{name} [{backend}] T={t} chunk={chunk:?}: relative L2 error {err:.3e} > {tol:.0e}"
                );
                outs.push((*chunk, y));
            }
            let (_, unchunked) = &outs[2];
            for (chunk, y) in &outs[..2] {
                let d = rel_l2(y, unchunked);
                assert!(
                    d <= chunk_tol,
                    "{name} [{backend}] T={t}: chunk {chunk:?} differs from unchunked by {d:.3e} > {chunk_tol:.0e}"
                );
            }
        }
    }
    eprintln!("{name}: worst relative L2 error {worst:.3e} (tolerance {tol:.0e})");
}

macro_rules! fixture_tests {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_fixture($name);
            }
        )*
    };
}

fixture_tests! {
    mixtral_f32 => "mixtral-float32",
    mixtral_bf16 => "mixtral-bfloat16",
    qwen2_moe_f32 => "qwen2_moe-float32",
    qwen2_moe_bf16 => "qwen2_moe-bfloat16",
    qwen3_moe_f32 => "qwen3_moe-float32",
    qwen3_moe_bf16 => "qwen3_moe-bfloat16",
    olmoe_f32 => "olmoe-float32",
    olmoe_bf16 => "olmoe-bfloat16",
    deepseek_v3_f32 => "deepseek_v3-float32",
    deepseek_v3_bf16 => "deepseek_v3-bfloat16",
    gpt_oss_f32 => "gpt_oss-float32",
    gpt_oss_bf16 => "gpt_oss-bfloat16",
    llama4_f32 => "llama4-float32",
    llama4_bf16 => "llama4-bfloat16",
}

#[test]
fn every_fixture_folder_is_tested() {
    // Guards the list above against a fixture being added without a test.
    let mut found: Vec<String> = std::fs::read_dir(crate::common::FIXTURES)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected: Vec<String> = crate::common::FAMILIES
        .iter()
        .flat_map(|f| [format!("{f}-bfloat16"), format!("{f}-float32")])
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn block_reports_family_layout() {
    let b = MoeBlock::load(fixture("qwen2_moe-float32"), 0, BlockOptions::default()).unwrap();
    assert_eq!(b.prefix(), "model.layers.0.mlp.");
    assert_eq!(b.shared_intermediate_size(), Some(64));
    assert_eq!(b.config().num_experts, 8);
    assert_eq!(b.config().top_k(), 4);
    let l = MoeBlock::load(fixture("llama4-bfloat16"), 0, BlockOptions::default()).unwrap();
    assert!(l.config().apply_router_weight_on_input);
    assert_eq!(l.dtype(), moe_core::DType::BF16);
    assert!(!l.report().to_string().is_empty());
}

#[test]
fn dtype_override_runs_f32_checkpoint_in_bf16() {
    let dir = fixture("mixtral-float32");
    let opts = BlockOptions {
        dtype: Some(moe_core::DType::BF16),
        ..Default::default()
    };
    let mut b = MoeBlock::load(&dir, 0, opts).unwrap();
    let x = io_tensor(&dir, "x_7");
    let y = b.forward(&x).unwrap();
    assert_eq!(y.dtype(), moe_core::DType::BF16);
    let err = rel_l2(&y, &io_tensor(&dir, "y_7"));
    assert!(err <= 3e-2, "bf16 run of an f32 checkpoint: {err:.3e}");
}

#[test]
fn multimodal_llama4_layout_loads() {
    // A multimodal Llama 4 checkpoint: keys under `text_config`, tensors under `language_model.`.
    let s = crate::common::Scratch::copy_of("llama4-bfloat16", "multimodal");
    s.edit_model(|t| {
        for (n, ..) in t.iter_mut() {
            *n = format!("language_model.{n}");
        }
    });
    s.edit_config(|c| {
        let text = serde_json::Value::Object(std::mem::take(c));
        c.insert("model_type".into(), "llama4".into());
        c.insert("text_config".into(), text);
    });
    let mut b = MoeBlock::load(s.path(), 0, BlockOptions::default()).unwrap();
    assert_eq!(b.prefix(), "language_model.model.layers.0.feed_forward.");
    assert!(b.hf_config().multimodal);
    let dir = fixture("llama4-bfloat16");
    let err = rel_l2(
        &b.forward(&io_tensor(&dir, "x_130")).unwrap(),
        &io_tensor(&dir, "y_130"),
    );
    assert!(err <= 3e-2, "{err:.3e}");
}
