//! Shared helpers: fixture paths, reading `io.safetensors`, relative L2 error, scratch copies
//! of fixtures for the bad-input tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use moe_core::Tensor;
use moe_hf::Checkpoint;

/// Vendored fixtures (never `/work/shared`), or `$MOE_FIXTURES_DIR/hf` when the binary runs
/// away from its checkout (the GPU bundle's `run.sh` sets it).
pub const FIXTURES: FixtureRoot = FixtureRoot {
    sub: "hf",
    vendored: concat!(env!("CARGO_MANIFEST_DIR"), "/../moe-testkit/fixtures/hf"),
};

/// Environment variable naming the fixtures folder (the same one `moe_testkit::fixtures_dir`
/// honours); its `hf/` and `hf-quant/` subfolders replace the vendored ones.
pub const FIXTURES_DIR_ENV: &str = "MOE_FIXTURES_DIR";

/// A fixtures subfolder: `$MOE_FIXTURES_DIR/<sub>` when the variable is set and not empty,
/// else the vendored path. Usable wherever a path is (`AsRef<Path>`).
#[derive(Clone, Copy, Debug)]
pub struct FixtureRoot {
    pub sub: &'static str,
    pub vendored: &'static str,
}

impl FixtureRoot {
    /// The resolved folder (read from the environment once per subfolder and process).
    pub fn path(self) -> &'static Path {
        static RESOLVED: Mutex<Vec<(&'static str, &'static Path)>> = Mutex::new(Vec::new());
        let mut resolved = RESOLVED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = resolved.iter().find(|(sub, _)| *sub == self.sub) {
            return p;
        }
        let path = match std::env::var_os(FIXTURES_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(self.sub),
            _ => PathBuf::from(self.vendored),
        };
        let path: &'static Path = Box::leak(path.into_boxed_path());
        resolved.push((self.sub, path));
        path
    }
}

impl AsRef<Path> for FixtureRoot {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

pub const FAMILIES: [&str; 7] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "llama4",
];
pub const TOKENS: [usize; 3] = [1, 7, 130];
pub const BACKENDS: [&str; 2] = ["reference", "cpu"];

pub fn fixture(name: &str) -> PathBuf {
    FIXTURES.path().join(name)
}

/// `x_T` / `y_T` of a fixture.
pub fn io_tensor(dir: &Path, key: &str) -> Tensor {
    let io = Checkpoint::open_file(dir.join("io.safetensors")).expect("io.safetensors opens");
    io.tensor(key)
        .and_then(|v| v.to_tensor(key))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// `||y - y_ref|| / ||y_ref||` in f64.
pub fn rel_l2(y: &Tensor, y_ref: &Tensor) -> f64 {
    assert_eq!(y.shape(), y_ref.shape(), "output shape");
    let a = y.to_f32_vec("y").expect("float output");
    let b = y_ref.to_f32_vec("y_ref").expect("float reference");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in a.iter().zip(&b) {
        let (a, b) = (f64::from(a), f64::from(b));
        num += (a - b) * (a - b);
        den += b * b;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Tolerance of the fixtures by dtype folder suffix.
pub fn tolerance(fixture: &str) -> f64 {
    if fixture.ends_with("bfloat16") { 3e-2 } else { 1e-5 }
}

/// A scratch directory unique to this process and `tag`, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("moe-hf-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// A scratch copy of fixture `name` (config, model, io).
    pub fn copy_of(name: &str, tag: &str) -> Scratch {
        Scratch::copy_from(&fixture(name), tag)
    }

    /// A scratch copy of the fixture folder `dir` (config, model, io).
    pub fn copy_from(dir: &Path, tag: &str) -> Scratch {
        let s = Scratch::new(tag);
        for f in ["config.json", "model.safetensors", "io.safetensors"] {
            std::fs::copy(dir.join(f), s.0.join(f)).expect("copy fixture file");
        }
        s
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Rewrites `config.json` through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let p = self.0.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(v.as_object_mut().unwrap());
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    /// Rewrites `model.safetensors`: `edit` gets (name, dtype, shape, bytes) entries to change.
    pub fn edit_model(&self, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
        let p = self.0.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut entries: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        edit(&mut entries);
        let views: Vec<_> = entries
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        std::fs::write(&p, out).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
