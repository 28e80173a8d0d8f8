//! Checkpoint access: sharded checkpoints (`model.safetensors.index.json`) load and compute
//! like the single file; views borrow from the mapping.

use std::collections::BTreeMap;

use moe_hf::{BlockOptions, Checkpoint, MoeBlock};

use crate::common::{Scratch, fixture, io_tensor, rel_l2};

/// Splits a fixture's `model.safetensors` into two shards plus an index.
fn shard(name: &str, tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    std::fs::copy(fixture(name).join("config.json"), s.path().join("config.json")).unwrap();
    let bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = BTreeMap::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(s.path().join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(s.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    s
}

#[test]
fn sharded_checkpoint_matches_single_file() {
    let s = shard("qwen2_moe-float32", "sharded");
    let ck = Checkpoint::open(s.path()).unwrap();
    let single = Checkpoint::open(fixture("qwen2_moe-float32")).unwrap();
    assert_eq!(ck.names().collect::<Vec<_>>(), single.names().collect::<Vec<_>>());
    let n = "model.layers.0.mlp.gate.weight";
    assert_eq!(ck.tensor(n).unwrap().data, single.tensor(n).unwrap().data);
    assert!(
        matches!(ck.tensor(n).unwrap().data, std::borrow::Cow::Borrowed(_)),
        "views borrow the mapping"
    );

    let mut b = MoeBlock::load(s.path(), 0, BlockOptions::default()).unwrap();
    let dir = fixture("qwen2_moe-float32");
    let y = b.forward(&io_tensor(&dir, "x_7")).unwrap();
    assert!(rel_l2(&y, &io_tensor(&dir, "y_7")) <= 1e-5);
}

#[test]
fn shard_index_naming_a_missing_tensor_is_bad_checkpoint() {
    let s = shard("olmoe-float32", "bad-index");
    let p = s.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["weight_map"]["model.layers.0.mlp.phantom.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = Checkpoint::open(s.path()).unwrap_err();
    assert!(matches!(e, moe_core::MoeError::BadCheckpoint { .. }), "{e:?}");
    assert!(e.to_string().contains("phantom"), "{e}");

    // A shard file that is gone is an i/o error naming it.
    let s = shard("olmoe-float32", "gone-shard");
    std::fs::remove_file(s.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(s.path()).unwrap_err();
    assert!(matches!(e, moe_core::MoeError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("model-00002-of-00002"), "{e}");
}

#[test]
fn missing_tensor_and_dtypes() {
    let ck = Checkpoint::open(fixture("gpt_oss-bfloat16")).unwrap();
    let e = ck.tensor("nope").unwrap_err();
    assert!(matches!(e, moe_core::MoeError::MissingTensor { .. }) && e.to_string().contains("nope"));
    let v = ck.tensor("model.layers.0.mlp.experts.gate_up_proj").unwrap();
    assert_eq!(v.dtype, moe_core::DType::BF16);
    assert_eq!(v.shape, vec![8, 64, 64]);
}
