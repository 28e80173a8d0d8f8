//! Skip logic, in one place, derived only from the backends' own verdicts: a cell is skipped
//! exactly when `moe::resolve_moe_impl` reports its requested backend rejected, and the skip
//! carries that backend's closed `RejectReason` and detail. Skips are printed (one line per
//! cell, see `report`) and appended to `target/moe-testkit/skips.jsonl`, so lost coverage is
//! visible and countable.
//!
//! `MOE_REQUIRE=<backend>[,<backend>..]` turns skips of those backends into failures (a GPU
//! CI job sets it for the GPU backends, so a missing driver cannot pass silently).

use std::io::Write;
use std::path::PathBuf;

use moe_core::{MoeConfig, MoeEnvironment, RejectReason, ResolutionReport, Result};

/// Why a cell does not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkipReason {
    pub backend: String,
    pub reason: RejectReason,
    pub detail: String,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rejects: {} ({})", self.backend, self.reason, self.detail)
    }
}

/// What resolution says about running `config` on its requested backend.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Run,
    Skip(SkipReason),
}

/// Asks the factory whether the backend `config.backend` names can implement `config` on
/// `env`. `Err` when resolution itself fails (an unknown backend name, for one), or when
/// the backend lost without being rejected (a selection bug, never a skip).
pub fn decide(config: &MoeConfig, env: &MoeEnvironment) -> Result<Decision> {
    let report = moe::resolve_moe_impl(config, env)?;
    decision_from_report(config.backend.as_deref().unwrap_or("auto"), &report)
}

/// The decision for `requested` given a resolution report (split out so it is testable with
/// hand-made reports).
pub fn decision_from_report(requested: &str, report: &ResolutionReport) -> Result<Decision> {
    if report.winner.as_deref() == Some(requested) {
        return Ok(Decision::Run);
    }
    match report.rejected.iter().find(|r| r.backend == requested) {
        Some(r) => Ok(Decision::Skip(SkipReason {
            backend: r.backend.clone(),
            reason: r.reason,
            detail: r.detail.clone(),
        })),
        None => Err(moe_core::MoeError::NoEligibleBackend {
            detail: format!(
                "`{requested}` was requested, `{}` won, and `{requested}` was not rejected: {report}",
                report.winner.as_deref().unwrap_or("<none>")
            ),
        }),
    }
}

/// Backends whose skips are failures (`MOE_REQUIRE`, comma-separated).
pub fn required_backends() -> Vec<String> {
    std::env::var("MOE_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `target/moe-testkit/skips.jsonl` (honouring `CARGO_TARGET_DIR`).
pub fn skips_file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target.join("moe-testkit").join("skips.jsonl")
}

/// Appends a skip to [`skips_file`] (the caller prints it, as `report::outcome_line` does).
/// `run` groups the lines of one run; the file is a log, so concurrent runs interleave whole
/// lines rather than overwrite each other.
pub fn record_skip(run: &str, cell: &str, skip: &SkipReason) {
    let line = serde_json::json!({
        "run": run,
        "cell": cell,
        "backend": skip.backend,
        "reason": skip.reason,
        "detail": skip.detail,
        "source": "can_implement",
    });
    let path = skips_file();
    // The log is a convenience; a read-only target dir must not fail the test run.
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .ok()
        .and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(&path).ok());
    if let Some(mut f) = written {
        let _ = writeln!(f, "{line}");
    }
}
