//! `moe quantize --model DIR --format fp8-block|nvfp4|mxfp4 --output DIR`: writes a float
//! checkpoint's routed experts in a quantized format's real layout (the work is
//! [`moe_hf::quantize_checkpoint`]'s), with a progress bar on stderr when it is a terminal.
//!
//! The output directory appears whole or not at all: the checkpoint is written into a new
//! directory beside `--output` and renamed into place once complete, so a run that fails or
//! is killed midway leaves a previous output as it was (and at worst a `.NAME.tmp-PID`
//! directory beside it). `--output` may be missing, empty, or a previous `moe quantize`
//! output, which is replaced; any other directory is refused before the work starts.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use moe_hf::{QuantizeOptions, TargetFormat, quantize_checkpoint};
use serde_json::json;

use crate::Summary;
use crate::tensor_io::read_tensor;

/// Parameters of a quantize run.
pub struct QuantizeRun<'a> {
    pub model: &'a Path,
    pub output: &'a Path,
    pub format: TargetFormat,
    pub max_shard_bytes: Option<usize>,
    /// Calibration activations: file and tensor name.
    pub calibration: Option<(&'a Path, &'a str)>,
}

/// Refuses `output` unless it is missing, empty, or a checkpoint `moe quantize` wrote (only
/// `.json` and `.safetensors` files, a config with a `quantization_config`): replacing it must
/// never destroy anything else. It may not be the model it reads.
fn check_replaceable(output: &Path, model: &Path) -> anyhow::Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        anyhow::bail!("the directory of --output `{}` does not exist", output.display());
    }
    if !output.exists() {
        return Ok(());
    }
    if !output.is_dir() {
        anyhow::bail!("--output `{}` exists and is not a directory", output.display());
    }
    if std::fs::canonicalize(output)? == std::fs::canonicalize(model)? {
        anyhow::bail!(
            "--output `{}` is the input model: writing it would destroy the input",
            output.display()
        );
    }
    let entries = std::fs::read_dir(output)?.collect::<Result<Vec<_>, _>>()?;
    if entries.is_empty() {
        return Ok(());
    }
    let ours = entries.iter().all(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        e.file_type().is_ok_and(|t| t.is_file()) && (name.ends_with(".json") || name.ends_with(".safetensors"))
    }) && std::fs::read_to_string(output.join("config.json"))
        .is_ok_and(|c| c.contains("\"quantization_config\""));
    if !ours {
        anyhow::bail!(
            "--output `{}` is a non-empty directory that is not a quantized checkpoint; refusing to replace it",
            output.display()
        );
    }
    Ok(())
}

/// A fresh path beside `output` for building the new checkpoint (same file system, so the
/// final rename is atomic).
fn staging_path(output: &Path, tag: &str) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Moves the complete checkpoint `staging` to `output`, replacing a previous one: the old
/// directory is moved aside first and removed only after the new one is in place (and put
/// back if that fails).
fn swap_in(staging: &Path, output: &Path) -> anyhow::Result<()> {
    let empty_or_missing = std::fs::read_dir(output).map_or(true, |mut d| d.next().is_none());
    if empty_or_missing {
        let _ = std::fs::remove_dir(output);
        return std::fs::rename(staging, output)
            .with_context(|| format!("moving the new checkpoint into `{}`", output.display()));
    }
    let old = staging_path(output, "old");
    std::fs::rename(output, &old).with_context(|| format!("moving the previous `{}` aside", output.display()))?;
    if let Err(e) = std::fs::rename(staging, output) {
        let _ = std::fs::rename(&old, output);
        return Err(e).with_context(|| format!("moving the new checkpoint into `{}`", output.display()));
    }
    std::fs::remove_dir_all(&old).with_context(|| format!("removing the previous checkpoint `{}`", old.display()))
}

pub fn run(r: &QuantizeRun<'_>) -> anyhow::Result<Summary> {
    check_replaceable(r.output, r.model)?;
    let staging = staging_path(r.output, "tmp");
    let _ = std::fs::remove_dir_all(&staging);
    let summary = quantize_into(r, &staging);
    match summary {
        Ok(s) => {
            swap_in(&staging, r.output)?;
            Ok(s)
        }
        Err(e) => {
            // Only this run's own directory is removed; the previous output was never touched.
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Quantizes into `dir` (a new directory) and builds the summary that names `--output`.
fn quantize_into(r: &QuantizeRun<'_>, dir: &Path) -> anyhow::Result<Summary> {
    let mut opts = QuantizeOptions::new(r.format);
    if let Some(b) = r.max_shard_bytes {
        opts.max_shard_bytes = b;
    }
    if let Some((path, key)) = r.calibration {
        opts.calibration = Some(read_tensor(path, key)?);
    }
    // The bar draws only on a terminal: piped or captured stderr (CI, tests) stays clean.
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} projections {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let summary = quantize_checkpoint(r.model, dir, &opts, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.tensor.to_string());
    })
    .with_context(|| {
        format!(
            "quantizing `{}` to {} into `{}`",
            r.model.display(),
            r.format,
            r.output.display()
        )
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let ratio = summary.expert_bytes_in as f64 / summary.expert_bytes_out.max(1) as f64;
    let text = format!(
        "moe quantize: {} {} -> {} ({}, {} experts layout)\n\
         layers: {:?}; experts {} -> {} bytes ({ratio:.2}x smaller); {} tensors copied unchanged\n\
         wrote {} in {secs:.2} s\n",
        summary.family,
        r.model.display(),
        r.output.display(),
        summary.format,
        summary.layout,
        summary.layers,
        summary.expert_bytes_in,
        summary.expert_bytes_out,
        summary.copied_tensors,
        summary.files.join(", "),
    );
    let json = json!({
        "mode": "quantize",
        "model": r.model.display().to_string(),
        "output": r.output.display().to_string(),
        "summary": summary,
        "seconds": secs,
    });
    Ok(Summary { text, json })
}
