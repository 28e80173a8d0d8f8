//! `moe quantize --model DIR --format fp8-block|nvfp4|mxfp4 --output DIR`: writes a float
//! checkpoint's routed experts in a quantized format's real layout (the work is
//! [`moe_hf::quantize_checkpoint`]'s), with a progress bar on stderr when it is a terminal.

use std::io::IsTerminal;
use std::path::Path;
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

pub fn run(r: &QuantizeRun<'_>) -> anyhow::Result<Summary> {
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
    let summary = quantize_checkpoint(r.model, r.output, &opts, &mut |p| {
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
