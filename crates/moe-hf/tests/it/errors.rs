//! Broken inputs: each is a typed `MoeError` whose message names the offending item.

use moe_core::{MoeError, Tensor};
use moe_hf::{BlockOptions, Checkpoint, HfConfig, MoeBlock};

use crate::common::{Scratch, fixture};

fn load(dir: &std::path::Path, layer: usize) -> Result<MoeBlock, MoeError> {
    MoeBlock::load(dir, layer, BlockOptions::default())
}

#[test]
fn truncated_safetensors_is_bad_checkpoint() {
    let s = Scratch::copy_of("olmoe-float32", "truncated");
    let p = s.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Shorter than the 8-byte header length itself.
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    let e = Checkpoint::open(s.path()).unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn corrupt_header_is_bad_checkpoint() {
    let s = Scratch::copy_of("mixtral-float32", "corrupt-header");
    let p = s.path().join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    // Garbage inside the JSON header.
    for b in &mut bytes[8..40] {
        *b = 0xFF;
    }
    std::fs::write(&p, &bytes).unwrap();
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // A header length pointing past the end of the file.
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
}

#[test]
fn data_offsets_out_of_range_are_bad_checkpoint() {
    let s = Scratch::copy_of("qwen3_moe-float32", "offsets");
    let p = s.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    // Drop the last 4 bytes: the header now promises data beyond the end of the file.
    std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    let e = Checkpoint::open(s.path()).unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
}

#[test]
fn missing_checkpoint_is_io_error() {
    let e = load(std::path::Path::new("/nonexistent/moe-hf-model"), 0).unwrap_err();
    assert!(matches!(e, MoeError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/moe-hf-model"), "{e}");

    let s = Scratch::copy_of("olmoe-float32", "no-model-file");
    std::fs::remove_file(s.path().join("model.safetensors")).unwrap();
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn missing_expert_tensor_is_named() {
    let s = Scratch::copy_of("qwen3_moe-float32", "missing-expert");
    let gone = "model.layers.0.mlp.experts.3.up_proj.weight";
    s.edit_model(|t| t.retain(|(n, ..)| n != gone));
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains(gone), "{e}");
}

#[test]
fn missing_fused_tensor_and_router_are_named() {
    let s = Scratch::copy_of("gpt_oss-float32", "missing-fused");
    let gone = "model.layers.0.mlp.experts.down_proj_bias";
    s.edit_model(|t| t.retain(|(n, ..)| n != gone));
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains(gone), "{e}");

    let s = Scratch::copy_of("mixtral-float32", "missing-router");
    s.edit_model(|t| t.retain(|(n, ..)| !n.ends_with("gate.weight")));
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains("gate.weight"), "{e}");

    let s = Scratch::copy_of("deepseek_v3-float32", "missing-shared");
    let gone = "model.layers.0.mlp.shared_experts.down_proj.weight";
    s.edit_model(|t| t.retain(|(n, ..)| n != gone));
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains(gone), "{e}");
}

#[test]
fn wrong_expert_shape_is_named() {
    let s = Scratch::copy_of("deepseek_v3-float32", "wrong-shape");
    let bad = "model.layers.0.mlp.experts.2.gate_proj.weight";
    s.edit_model(|t| {
        for (n, _, shape, data) in t.iter_mut() {
            if n == bad {
                // [32, 64] -> [16, 64]
                *shape = vec![16, 64];
                data.truncate(16 * 64 * 4);
            }
        }
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(bad), "{e}");

    let s = Scratch::copy_of("llama4-float32", "wrong-fused-shape");
    let bad = "model.layers.0.feed_forward.experts.gate_up_proj";
    s.edit_model(|t| {
        for (n, _, shape, data) in t.iter_mut() {
            if n == bad {
                // [8, 64, 64] -> [4, 64, 64]
                *shape = vec![4, 64, 64];
                data.truncate(4 * 64 * 64 * 4);
            }
        }
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains(bad), "{e}");
}

#[test]
fn wrong_input_shape_names_x() {
    let mut b = load(&fixture("olmoe-float32"), 0).unwrap();
    let x = Tensor::from_f32(vec![3, 63], vec![0.0; 3 * 63]).unwrap();
    let e = b.forward(&x).unwrap_err();
    assert!(matches!(e, MoeError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("`x`"), "{e}");
    let x = Tensor::from_f32(vec![64], vec![0.0; 64]).unwrap();
    assert!(matches!(b.forward(&x), Err(MoeError::ShapeMismatch { .. })));
    // Zero tokens is a valid (empty) batch.
    let x = Tensor::from_f32(vec![0, 64], vec![]).unwrap();
    assert_eq!(b.forward(&x).unwrap().shape(), &[0, 64]);
}

#[test]
fn top_k_above_num_experts_is_invalid_config() {
    let s = Scratch::copy_of("mixtral-float32", "topk");
    s.edit_config(|c| {
        c.insert("num_experts_per_tok".into(), 99.into());
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::InvalidConfig { .. }), "{e:?}");
    assert!(e.to_string().contains("top_k") && e.to_string().contains("99"), "{e}");
}

#[test]
fn n_group_not_dividing_experts_is_invalid_config() {
    let s = Scratch::copy_of("deepseek_v3-float32", "ngroup");
    s.edit_config(|c| {
        c.insert("n_group".into(), 3.into());
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::InvalidConfig { .. }), "{e:?}");
    assert!(e.to_string().contains("n_group") && e.to_string().contains('3'), "{e}");
}

#[test]
fn unknown_model_type_is_unsupported() {
    let s = Scratch::copy_of("mixtral-float32", "model-type");
    s.edit_config(|c| {
        c.insert("model_type".into(), "frobnicator_moe".into());
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::UnsupportedModel { .. }), "{e:?}");
    assert!(e.to_string().contains("frobnicator_moe"), "{e}");
}

#[test]
fn dense_layer_is_unsupported() {
    let s = Scratch::copy_of("deepseek_v3-float32", "dense");
    s.edit_config(|c| {
        c.insert("first_k_dense_replace".into(), 1.into());
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::UnsupportedModel { .. }), "{e:?}");
    assert!(
        e.to_string().contains("layer 0") && e.to_string().contains("dense"),
        "{e}"
    );

    let s = Scratch::copy_of("qwen2_moe-float32", "mlp-only");
    s.edit_config(|c| {
        c.insert("mlp_only_layers".into(), serde_json::json!([0]));
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(e.to_string().contains("layer 0"), "{e}");

    let s = Scratch::copy_of("llama4-float32", "llama4-dense");
    s.edit_config(|c| {
        c.insert("num_hidden_layers".into(), 2.into());
        c.insert("moe_layers".into(), serde_json::json!([1]));
    });
    let e = load(s.path(), 0).unwrap_err();
    assert!(e.to_string().contains("layer 0"), "{e}");
}

#[test]
fn layer_out_of_range_is_named() {
    let e = load(&fixture("olmoe-float32"), 5).unwrap_err();
    assert!(matches!(e, MoeError::UnsupportedModel { .. }), "{e:?}");
    assert!(e.to_string().contains("layer 5"), "{e}");
}

#[test]
fn layer_without_weights_is_missing_tensor() {
    // A config that claims two layers, over a checkpoint that has one.
    let s = Scratch::copy_of("olmoe-float32", "two-layers");
    s.edit_config(|c| {
        c.insert("num_hidden_layers".into(), 2.into());
    });
    let e = load(s.path(), 1).unwrap_err();
    assert!(matches!(e, MoeError::MissingTensor { .. }), "{e:?}");
    assert!(e.to_string().contains("layers.1."), "{e}");
}

#[test]
fn config_json_errors_are_typed() {
    let e = HfConfig::from_json_str("{not json", "config.json").unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
    let e = HfConfig::from_json_str(r#"{"model_type":"mixtral","hidden_size":8}"#, "config.json").unwrap_err();
    assert!(matches!(e, MoeError::InvalidConfig { .. }), "{e:?}");
    assert!(e.to_string().contains("num_hidden_layers"), "{e}");
}

#[test]
fn unsupported_dtype_names_the_tensor() {
    let s = Scratch::copy_of("olmoe-float32", "f64");
    s.edit_model(|t| t.push(("extra.f64".into(), safetensors::Dtype::F64, vec![2], vec![0u8; 16])));
    let ck = Checkpoint::open(s.path()).unwrap();
    let e = ck.tensor("extra.f64").unwrap_err();
    assert!(matches!(e, MoeError::BadCheckpoint { .. }), "{e:?}");
    assert!(e.to_string().contains("extra.f64"), "{e}");
}

#[test]
fn quantized_config_over_float_weights_is_refused() {
    // The config promises FP8 block weights; the float tensors on disk do not match the
    // format, and whichever layer refuses first, the result is a typed error, not a panic.
    let s = Scratch::copy_of("deepseek_v3-bfloat16", "fp8");
    s.edit_config(|c| {
        c.insert(
            "quantization_config".into(),
            serde_json::json!({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}),
        );
    });
    let cfg = HfConfig::from_dir(s.path()).unwrap();
    assert_eq!(cfg.quant.algo, moe_core::QuantAlgo::Fp8Block);
    let e = load(s.path(), 0).unwrap_err();
    assert!(matches!(e, MoeError::DTypeMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model.layers.0.mlp.experts.0.gate_proj.weight"),
        "{e}"
    );
}
