//! Reading input activations from and writing outputs to safetensors files.

use std::path::Path;

use anyhow::Context;
use moe_core::{DType, Tensor};

/// Tensor `key` of the safetensors file `path`, as an owned host tensor.
pub fn read_tensor(path: &Path, key: &str) -> anyhow::Result<Tensor> {
    let file =
        moe_hf::Checkpoint::open_file(path).with_context(|| format!("reading input file `{}`", path.display()))?;
    let view = file.tensor(key).with_context(|| {
        let mut keys: Vec<&str> = file.names().collect();
        keys.truncate(10);
        format!(
            "input file `{}` has no tensor `{key}` (it has: {})",
            path.display(),
            keys.join(", ")
        )
    })?;
    Ok(view.to_tensor(key)?)
}

/// The debug check of `--check-finite`: refuses an output `what` holding NaN or infinity,
/// naming the first such element's row and column.
pub fn check_finite_output(what: &str, t: &Tensor) -> anyhow::Result<()> {
    let v = t.to_f32_vec(what)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        let cols = t.row_len().max(1);
        anyhow::bail!(
            "{what} holds {} at row {}, column {} (--check-finite)",
            v[i],
            i / cols,
            i % cols
        );
    }
    Ok(())
}

/// Writes `t` as tensor `name` of a new safetensors file at `path`.
pub fn write_tensor(path: &Path, name: &str, t: &Tensor) -> anyhow::Result<()> {
    let dtype = match t.dtype() {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        other => anyhow::bail!("cannot write a {other} output"),
    };
    let view = t.view()?;
    let st = safetensors::tensor::TensorView::new(dtype, t.shape().to_vec(), &view.data)
        .map_err(|e| anyhow::anyhow!("building output tensor `{name}`: {e}"))?;
    let bytes = safetensors::serialize([(name, st)], None)
        .map_err(|e| anyhow::anyhow!("serializing output tensor `{name}`: {e}"))?;
    crate::output::write_atomic(path, "output file", &bytes)
}
