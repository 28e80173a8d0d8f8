//! The vendored Hugging Face fixtures are all there and their io files load as documented
//! (`x_T`, `y_T` of shape `[T, 64]` in the folder's dtype). The families' numerics are
//! tested against them in moe-hf's own integration tests.

use moe_core::DType;
use moe_testkit::{HF_DTYPES, HF_FAMILIES, HF_TOKEN_COUNTS, hf_fixture, hf_fixtures};

#[test]
fn every_family_has_both_dtypes_with_all_files() {
    let all = hf_fixtures().unwrap();
    assert_eq!(all.len(), HF_FAMILIES.len() * HF_DTYPES.len());
    for f in &all {
        for path in [f.config_path(), f.model_path(), f.io_path()] {
            assert!(path.is_file(), "{}: missing {}", f.id(), path.display());
        }
    }
}

#[test]
fn io_tensors_have_the_documented_shapes_and_dtypes() {
    for f in hf_fixtures().unwrap() {
        for t in HF_TOKEN_COUNTS {
            let (x, y) = f.io(t).unwrap_or_else(|e| panic!("{}: x_{t}/y_{t}: {e}", f.id()));
            assert_eq!(x.shape(), &[t, 64], "{} x_{t}", f.id());
            assert_eq!(y.shape(), &[t, 64], "{} y_{t}", f.id());
            assert_eq!(x.dtype(), f.dtype(), "{} x_{t}", f.id());
            assert_eq!(y.dtype(), f.dtype(), "{} y_{t}", f.id());
        }
    }
}

#[test]
fn bounds_follow_the_fixture_readme() {
    assert_eq!(hf_fixture("mixtral", "float32").unwrap().rel_l2_bound(), 1e-5);
    assert_eq!(hf_fixture("llama4", "bf16").unwrap().rel_l2_bound(), 3e-2);
    assert_eq!(hf_fixture("olmoe", "bfloat16").unwrap().dtype(), DType::BF16);
}

#[test]
fn unknown_family_or_dtype_is_a_typed_error() {
    let e = hf_fixture("gpt2", "float32").unwrap_err().to_string();
    assert!(e.contains("gpt2"), "{e}");
    let e = hf_fixture("mixtral", "float16").unwrap_err().to_string();
    assert!(e.contains("float16"), "{e}");
}
