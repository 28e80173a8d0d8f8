//! Safetensors checkpoints on disk: a single `model.safetensors` or a sharded set described by
//! `model.safetensors.index.json`, memory-mapped and served as borrowed [`TensorView`]s.
//!
//! Every file is mapped once and its header is parsed and validated up front (offsets inside
//! the file, header within bounds), so a truncated or corrupt file fails at
//! [`Checkpoint::open`] with [`MoeError::BadCheckpoint`] instead of at the first tensor read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use moe_core::{DType, MoeError, Result, TensorView, limits};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One mapped safetensors file with its validated header.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    /// Header length in bytes (the data section starts at `8 + header_len`).
    header_len: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<MappedFile> {
        let io = |source| MoeError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            // An empty or few-byte file cannot even hold the header length; mapping a
            // zero-length file is also an error on some platforms, so say what is wrong here.
            return Err(bad(
                path,
                format!("file is {len} bytes, too short for a safetensors header"),
            ));
        }
        // SAFETY: the mapping is read-only and lives as long as the `Checkpoint`. Memory-mapping
        // is sound only if no process modifies or truncates the file while it is mapped; like
        // every safetensors loader we assume checkpoints are not rewritten while being read
        // (a concurrent truncation would fault on access, a concurrent write would change the
        // weights under us). This is the crate's only `unsafe`.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        check_header_bounds(&map).map_err(|detail| bad(path, detail))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| bad(path, format!("invalid safetensors data: {e}")))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
            header_len,
            metadata,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .info(name)
            .ok_or_else(|| MoeError::MissingTensor { name: name.into() })?;
        let dtype = convert_dtype(info.dtype).ok_or_else(|| {
            bad(
                &self.path,
                format!("tensor `{name}` has unsupported dtype {}", info.dtype),
            )
        })?;
        let data = self.bytes(name, info)?;
        let view = TensorView {
            dtype,
            shape: info.shape.clone(),
            data: std::borrow::Cow::Borrowed(data),
        };
        if view.numel() * dtype.size_in_bytes() != data.len() {
            return Err(bad(
                &self.path,
                format!(
                    "tensor `{name}` has {} bytes for shape {:?} of {dtype}",
                    data.len(),
                    info.shape
                ),
            ));
        }
        Ok(view)
    }

    /// The stored bytes of `name`, checked to lie inside the file.
    fn bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8]> {
        let (start, end) = info.data_offsets;
        let base = 8 + self.header_len;
        // `read_metadata` already validated that offsets are contiguous and that the data
        // section ends exactly at the end of the file; check again rather than index blindly.
        base.checked_add(start)
            .zip(base.checked_add(end))
            .and_then(|(a, b)| self.map.get(a..b))
            .ok_or_else(|| {
                bad(
                    &self.path,
                    format!("tensor `{name}` data {start}..{end} lies outside the file"),
                )
            })
    }
}

/// Refuses a safetensors file whose JSON header is longer than
/// [`limits::MAX_SAFETENSORS_HEADER_BYTES`] or names more than
/// [`limits::MAX_SAFETENSORS_TENSORS`] tensors, before the header is parsed: parsing costs
/// about a kilobyte per entry, so a small file of empty tensors could otherwise ask for
/// gigabytes.
fn check_header_bounds(file: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = file.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Ok(()); // too short: the parser names that
    };
    let n = u64::from_le_bytes(len);
    if n > limits::MAX_SAFETENSORS_HEADER_BYTES as u64 {
        return Err(format!(
            "header of {n} bytes is larger than the limit of {} bytes (docs/LIMITS.md)",
            limits::MAX_SAFETENSORS_HEADER_BYTES
        ));
    }
    let header = file.get(8..8 + n as usize).unwrap_or(&file[8..]);
    let entries = top_level_members(header, limits::MAX_SAFETENSORS_TENSORS + 1);
    if entries > limits::MAX_SAFETENSORS_TENSORS {
        return Err(format!(
            "header names more than {} tensors, the limit (docs/LIMITS.md)",
            limits::MAX_SAFETENSORS_TENSORS
        ));
    }
    Ok(())
}

/// Members of the top-level JSON object in `json` (commas at depth 1, plus one), counting no
/// further than `stop`. A lexical scan that only tracks strings and brackets: malformed JSON
/// gets some count, and the parser that runs next reports what is wrong with it.
fn top_level_members(json: &[u8], stop: usize) -> usize {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut members, mut any) = (0usize, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                any |= depth == 1;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                members += 1;
                if members >= stop {
                    return members;
                }
            }
            _ => {}
        }
    }
    members + usize::from(any)
}

fn bad(path: &Path, detail: impl Into<String>) -> MoeError {
    MoeError::BadCheckpoint {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// The workspace dtype of a safetensors dtype, `None` for types the runtime has no use for
/// (bool, f64, complex, 16/32/64-bit unsigned, fp8 e5m2, sub-byte MX types).
pub fn convert_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F8_E4M3 => DType::F8E4M3,
        Dtype::F8_E8M0 => DType::E8M0,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

/// A checkpoint directory's safetensors, memory-mapped.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("files", &self.files.iter().map(|m| &m.path).collect::<Vec<_>>())
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// The shard index file: only `weight_map` matters to us.
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards named by `dir/model.safetensors.index.json`
    /// when the index exists (each shard is mapped once). `dir` may also be a path to a single
    /// `.safetensors` file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref();
        if dir.is_file() {
            return Checkpoint::open_file(dir);
        }
        if !dir.is_dir() {
            return Err(MoeError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint directory not found"),
            });
        }
        let index_path = dir.join(INDEX_FILE);
        if index_path.is_file() {
            return Checkpoint::open_sharded(dir, &index_path);
        }
        let single = dir.join(SINGLE_FILE);
        if !single.is_file() {
            return Err(MoeError::Io {
                path: single.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("neither {SINGLE_FILE} nor {INDEX_FILE} found"),
                ),
            });
        }
        let mut ck = Checkpoint::open_file(&single)?;
        ck.dir = dir.to_path_buf();
        Ok(ck)
    }

    /// Opens one safetensors file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = MappedFile::open(path)?;
        let index = file.metadata.tensors().into_keys().map(|n| (n, 0)).collect();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Checkpoint {
            dir,
            files: vec![file],
            index,
        })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text = crate::config::read_small_json(index_path, limits::MAX_SHARD_INDEX_BYTES)?;
        let idx: ShardIndex =
            serde_json::from_str(&text).map_err(|e| bad(index_path, format!("invalid shard index: {e}")))?;
        // Deterministic shard order (by file name) so error messages and `names` are stable.
        let shard_names: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut shard_of = HashMap::new();
        for shard in shard_names {
            if shard.contains("..") || Path::new(shard).is_absolute() {
                return Err(bad(
                    index_path,
                    format!("shard `{shard}` is outside the checkpoint directory"),
                ));
            }
            shard_of.insert(shard.clone(), files.len());
            files.push(MappedFile::open(&dir.join(shard))?);
        }
        let mut index = BTreeMap::new();
        for (name, shard) in &idx.weight_map {
            let i = shard_of[shard];
            if files[i].info(name).is_none() {
                return Err(bad(
                    &files[i].path,
                    format!("shard index maps `{name}` to this file, which does not contain it"),
                ));
            }
            index.insert(name.clone(), i);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    /// The directory (or the file's directory) this checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The tensor `name`, borrowed from the mapping.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| MoeError::MissingTensor { name: name.into() })?;
        self.files[i].view(name)
    }

    /// The tensor `name`, or `None` when absent (errors only for present-but-unreadable).
    pub fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        if self.contains(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Shape and dtype of `name` without touching its data.
    pub fn info(&self, name: &str) -> Option<(DType, &[usize])> {
        let i = *self.index.get(name)?;
        let info = self.files[i].info(name)?;
        convert_dtype(info.dtype).map(|d| (d, info.shape.as_slice()))
    }

    /// The stored bytes of `name` with its safetensors dtype and shape, whatever the dtype
    /// (for copying tensors the runtime has no use for, e.g. bool or f64 buffers, unchanged).
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let i = *self
            .index
            .get(name)
            .ok_or_else(|| MoeError::MissingTensor { name: name.into() })?;
        let file = &self.files[i];
        let info = file
            .info(name)
            .ok_or_else(|| MoeError::MissingTensor { name: name.into() })?;
        Ok((info.dtype, info.shape.as_slice(), file.bytes(name, info)?))
    }

    /// Path of the file holding `name` (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_members_are_counted_outside_strings_and_nested_values() {
        let h = br#"{"a,{":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"b\",":{},"__metadata__":{"x":"y"}}"#;
        assert_eq!(top_level_members(h, 100), 3);
        assert_eq!(top_level_members(b"{}", 100), 0);
        assert_eq!(top_level_members(b"{,,,,,,}", 3), 3, "stops counting at the bound");
    }

    #[test]
    fn oversized_headers_are_refused_before_parsing() {
        let mut file = (u64::MAX).to_le_bytes().to_vec();
        file.extend_from_slice(b"{}");
        assert!(
            check_header_bounds(&file)
                .unwrap_err()
                .contains("larger than the limit")
        );
        let n = limits::MAX_SAFETENSORS_TENSORS + 1;
        let mut header = String::from("{");
        for i in 0..n {
            header.push_str(&format!("\"{i}\":{{}},"));
        }
        header.push('}');
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        assert!(check_header_bounds(&file).unwrap_err().contains("tensors"));
    }
}
