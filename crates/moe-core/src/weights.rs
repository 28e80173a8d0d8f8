//! Where weights come from: the [`WeightSource`] contract (tensors by canonical name) and an
//! in-memory implementation for tests and synthetic layers.
//!
//! Canonical per-expert names follow TensorRT-LLM's VANILLA schema after the model strips its
//! prefix: `"{e}.w1.weight"` (gate, `[I, H]`), `"{e}.w3.weight"` (up, `[I, H]`),
//! `"{e}.w2.weight"` (down, `[H, I]`), optional `.bias`, and scale tensors such as
//! `"{e}.w1.weight_scale"`. Model loaders (`moe-hf`) map real checkpoint names onto these.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::tensor::{Tensor, TensorView};

/// The three projections of a gated expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Gate projection `w1` (`gate_proj`), `[I, H]`.
    W1,
    /// Down projection `w2` (`down_proj`), `[H, I]`.
    W2,
    /// Up projection `w3` (`up_proj`), `[I, H]`.
    W3,
}

impl Proj {
    pub fn as_str(self) -> &'static str {
        match self {
            Proj::W1 => "w1",
            Proj::W2 => "w2",
            Proj::W3 => "w3",
        }
    }
}

/// Canonical name of a per-expert tensor, e.g. `expert_tensor_name(3, Proj::W1, "weight")`
/// = `"3.w1.weight"`.
pub fn expert_tensor_name(expert: usize, proj: Proj, suffix: &str) -> String {
    format!("{expert}.{}.{suffix}", proj.as_str())
}

/// Tensors by canonical name. Implementations map files (mmap, single or sharded) or memory.
pub trait WeightSource: Send + Sync {
    /// The tensor called `name`, `Ok(None)` if absent, `Err` if present but unreadable.
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>>;

    /// Names this source can serve (for diagnostics and partial loading).
    fn names(&self) -> Vec<String>;

    /// Description used in error messages (a path, "memory").
    fn describe(&self) -> String;
}

/// Weights held in memory, by canonical name.
#[derive(Clone, Debug, Default)]
pub struct MemoryWeights {
    tensors: BTreeMap<String, Tensor>,
}

impl MemoryWeights {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
}

impl WeightSource for MemoryWeights {
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        self.tensors.get(name).map(Tensor::view).transpose()
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
