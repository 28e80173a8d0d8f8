//! The output side of `moe quantize`: tensors collected into safetensors shards of bounded
//! size (each written to a temporary file when full, renamed into place with the index once
//! every shard is written), and the JSON files beside them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use moe_core::{DType, MoeError, Result, Tensor};
use safetensors::Dtype;
use serde_json::{Value, json};

use crate::checkpoint::{Checkpoint, INDEX_FILE, SINGLE_FILE};

/// The safetensors dtype of a workspace dtype.
fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::U8 | DType::Fp4E2M1x2 => Dtype::U8,
        DType::I8 => Dtype::I8,
        DType::F8E4M3 => Dtype::F8_E4M3,
        DType::E8M0 => Dtype::F8_E8M0,
    }
}

/// Where a tensor's bytes come from.
pub(super) enum Data {
    Owned(Vec<u8>),
    /// Copied from the source checkpoint (its byte length).
    Copied(usize),
}

pub(super) struct Entry {
    pub(super) name: String,
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<usize>,
    pub(super) data: Data,
}

impl Entry {
    pub(super) fn len(&self) -> usize {
        match &self.data {
            Data::Owned(v) => v.len(),
            Data::Copied(n) => *n,
        }
    }
}

/// Collects tensors into shards of bounded size and writes each when full.
pub(super) struct ShardWriter {
    dir: PathBuf,
    max_bytes: usize,
    pending: Vec<Entry>,
    pending_bytes: usize,
    /// Temporary shard files written so far, with their tensor names and sizes.
    shards: Vec<(PathBuf, Vec<String>, usize)>,
}

impl ShardWriter {
    pub(super) fn new(dir: &Path, max_bytes: usize) -> ShardWriter {
        ShardWriter {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
        }
    }

    pub(super) fn push_tensor(&mut self, ckpt: &Checkpoint, name: String, t: &Tensor) -> Result<()> {
        let data = t.view()?.data.into_owned();
        self.push(
            ckpt,
            Entry {
                name,
                dtype: st_dtype(t.dtype()),
                shape: t.shape().to_vec(),
                data: Data::Owned(data),
            },
        )
    }

    pub(super) fn push(&mut self, ckpt: &Checkpoint, entry: Entry) -> Result<()> {
        if !self.pending.is_empty() && self.pending_bytes + entry.len() > self.max_bytes {
            self.flush(ckpt)?;
        }
        self.pending_bytes += entry.len();
        self.pending.push(entry);
        Ok(())
    }

    fn flush(&mut self, ckpt: &Checkpoint) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(format!(".moe-quantize-shard-{}.tmp", self.shards.len()));
        let mut views = Vec::with_capacity(self.pending.len());
        for e in &self.pending {
            let data: &[u8] = match &e.data {
                Data::Owned(v) => v,
                Data::Copied(_) => ckpt.raw(&e.name)?.2,
            };
            let v = safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), data).map_err(|err| {
                MoeError::BadCheckpoint {
                    path: path.display().to_string(),
                    detail: format!("tensor `{}`: {err}", e.name),
                }
            })?;
            views.push((e.name.clone(), v));
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &path).map_err(|err| MoeError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(err.to_string()),
        })?;
        let names = self.pending.drain(..).map(|e| e.name).collect();
        self.shards.push((path, names, self.pending_bytes));
        self.pending_bytes = 0;
        Ok(())
    }

    /// Writes the last shard and gives the shards their final names (plus the index when
    /// there are several); returns the file names.
    pub(super) fn finish(&mut self, ckpt: &Checkpoint) -> Result<Vec<String>> {
        self.flush(ckpt)?;
        let n = self.shards.len();
        let rename = |from: &Path, to: &str| {
            std::fs::rename(from, self.dir.join(to)).map_err(|source| MoeError::Io {
                path: to.to_string(),
                source,
            })
        };
        if n == 1 {
            rename(&self.shards[0].0, SINGLE_FILE)?;
            return Ok(vec![SINGLE_FILE.to_string()]);
        }
        let mut weight_map = BTreeMap::new();
        let mut files = Vec::new();
        let mut total = 0;
        for (k, (path, names, bytes)) in self.shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
            rename(path, &file)?;
            for name in names {
                weight_map.insert(name.clone(), file.clone());
            }
            total += bytes;
            files.push(file);
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&self.dir.join(INDEX_FILE), &index)?;
        files.push(INDEX_FILE.to_string());
        Ok(files)
    }

    /// Removes the temporary shards of a failed run.
    pub(super) fn abandon(&mut self) {
        for (path, ..) in self.shards.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| MoeError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| MoeError::Io {
        path: path.display().to_string(),
        source,
    })
}
