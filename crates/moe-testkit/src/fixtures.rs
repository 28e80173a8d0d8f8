//! The vendored Hugging Face fixtures (`fixtures/hf/<family>-<dtype>/`): a one-layer model of
//! each family saved by transformers, with inputs `x_T` and outputs `y_T` of its MoE block
//! for `T` in [`HF_TOKEN_COUNTS`]. See `fixtures/hf/README.md`.

use std::path::PathBuf;

use moe_core::{DType, MoeError, Result, Tensor};

/// Environment variable naming the fixtures folder in place of the vendored one: a test binary
/// run away from its checkout (the GPU bundle's `run.sh` sets it to the bundle's `fixtures/`).
pub const FIXTURES_DIR_ENV: &str = "MOE_FIXTURES_DIR";

/// The folder the fixtures live in: `$MOE_FIXTURES_DIR` when set and not empty, else the
/// vendored `crates/moe-testkit/fixtures` of the checkout the binary was built from.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os(FIXTURES_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures")),
    }
}

/// Families with a fixture (the folder prefix, which is transformers' `model_type` except
/// for `llama4`, whose text model is `llama4_text`).
pub const HF_FAMILIES: [&str; 7] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "llama4",
];

/// Checkpoint dtypes with a fixture (the folder suffix, as transformers spells them).
pub const HF_DTYPES: [&str; 2] = ["float32", "bfloat16"];

/// Token counts of the recorded inputs and outputs.
pub const HF_TOKEN_COUNTS: [usize; 3] = [1, 7, 130];

/// One fixture folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfFixture {
    pub family: &'static str,
    pub dtype_name: &'static str,
    pub dir: PathBuf,
}

impl HfFixture {
    /// The checkpoint's dtype.
    pub fn dtype(&self) -> DType {
        if self.dtype_name == "bfloat16" {
            DType::BF16
        } else {
            DType::F32
        }
    }

    /// Id used in test output: `mixtral-bfloat16`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.family, self.dtype_name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    pub fn io_path(&self) -> PathBuf {
        self.dir.join("io.safetensors")
    }

    /// The block's input `x_T` and output `y_T` (`[T, hidden]`, checkpoint dtype).
    pub fn io(&self, tokens: usize) -> Result<(Tensor, Tensor)> {
        let ckpt = moe_hf::Checkpoint::open_file(self.io_path())?;
        let load = |name: String| -> Result<Tensor> { ckpt.tensor(&name)?.to_tensor(&name) };
        Ok((load(format!("x_{tokens}"))?, load(format!("y_{tokens}"))?))
    }

    /// Relative-L2 bound against `y_T` (see [`crate::tolerance::hf_rel_l2_bound`]).
    pub fn rel_l2_bound(&self) -> f64 {
        crate::tolerance::hf_rel_l2_bound(self.dtype())
    }
}

/// The fixture of `family` in `dtype` (`float32`/`bfloat16`; `f32`/`bf16` also accepted),
/// or an error naming what is missing.
pub fn hf_fixture(family: &str, dtype: &str) -> Result<HfFixture> {
    let family = HF_FAMILIES
        .iter()
        .find(|f| **f == family)
        .ok_or_else(|| MoeError::UnsupportedModel {
            detail: format!("no HF fixture for family `{family}`; have {HF_FAMILIES:?}"),
        })?;
    let dtype_name = match dtype {
        "float32" | "f32" => "float32",
        "bfloat16" | "bf16" => "bfloat16",
        other => {
            return Err(MoeError::config(
                "dtype",
                format!("no HF fixtures in `{other}`; have {HF_DTYPES:?}"),
            ));
        }
    };
    let dir = fixtures_dir().join("hf").join(format!("{family}-{dtype_name}"));
    if !dir.join("config.json").is_file() {
        return Err(MoeError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "fixture folder missing"),
        });
    }
    Ok(HfFixture {
        family,
        dtype_name,
        dir,
    })
}

/// Every fixture, family-major.
pub fn hf_fixtures() -> Result<Vec<HfFixture>> {
    HF_FAMILIES
        .iter()
        .flat_map(|f| HF_DTYPES.iter().map(move |d| hf_fixture(f, d)))
        .collect()
}
