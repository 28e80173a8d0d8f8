//! The shared test kit of the MoE runtime (a dev-dependency only; `xtask` runs its binary).
//!
//! - [`matrix`]: the test matrix as data (backend x dtype x routing x shape x chunking, and
//!   an activation sweep), with TensorRT-LLM-style cell ids;
//! - [`skip`]: skips derived only from the backends' `can_implement` (through
//!   `moe::resolve_moe_impl`), printed and appended to `target/moe-testkit/skips.jsonl`;
//! - [`runner`] and [`report`]: build each cell's layer with `moe::create_moe_with` (over
//!   in-process ranks for the parallel sweep, [`ranks`]), compare with the reference backend
//!   (itself checked against the naive [`oracle`]);
//! - [`tolerance`]: the accuracy criteria of TensorRT-LLM (§7.5) and of this workspace;
//! - [`fixtures`]: the vendored Hugging Face fixtures;
//! - [`capabilities`]: the generated capability table of the developer guide;
//! - [`rng`], [`data`]: deterministic test data.
//!
//! Tests never skip on their own: a cell that cannot run is skipped here, with the
//! backend's closed `RejectReason` (`cargo xtask check-boundaries`, rule `no-adhoc-skip`).

pub mod capabilities;
pub mod data;
pub mod fixtures;
pub mod matrix;
pub mod oracle;
pub mod ranks;
pub mod report;
pub mod rng;
pub mod runner;
pub mod skip;
pub mod tolerance;

/// The workspace root (this crate lives at `crates/moe-testkit`).
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

pub use fixtures::{HF_DTYPES, HF_FAMILIES, HF_TOKEN_COUNTS, HfFixture, fixtures_dir, hf_fixture, hf_fixtures};
pub use matrix::{Cell, Flavor, Shape, cells};
pub use report::{MatrixReport, all_cells, outcome_line, run_cells};
pub use runner::{CellOutcome, ORACLE_BACKEND, Oracle, Runner, Verdict, run_layer};
pub use skip::{Decision, SkipReason, decide};
pub use tolerance::{
    AccuracyReport, Tolerance, check_accuracy, hf_rel_l2_bound, quant_tolerance, rel_l2, rel_l2_bound,
};
