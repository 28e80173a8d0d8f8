//! Running the whole matrix and reporting it: one line per cell, a summary with skips
//! grouped by backend and reason, and a JSON form for tools.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::matrix::{Cell, cells};
use crate::runner::{CellOutcome, Runner, Verdict};

/// Every cell's outcome, in matrix order.
#[derive(Clone, Debug, Default)]
pub struct MatrixReport {
    pub outcomes: Vec<CellOutcome>,
    pub seconds: f64,
}

impl MatrixReport {
    pub fn passed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Pass { .. }))
            .count()
    }

    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Fail { .. }))
            .count()
    }

    pub fn skipped(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Skip(_)))
            .count()
    }

    pub fn failures(&self) -> impl Iterator<Item = &CellOutcome> {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Fail { .. }))
    }

    /// `N passed, N failed, N skipped` plus time and skip reasons by backend.
    pub fn summary(&self) -> String {
        let mut reasons: BTreeMap<(String, String), usize> = BTreeMap::new();
        for o in &self.outcomes {
            if let Verdict::Skip(s) = &o.verdict {
                *reasons.entry((s.backend.clone(), s.reason.to_string())).or_default() += 1;
            }
        }
        let mut s = format!(
            "matrix: {} cells in {:.2} s\n{} passed, {} failed, {} skipped\n",
            self.outcomes.len(),
            self.seconds,
            self.passed(),
            self.failed(),
            self.skipped()
        );
        for ((backend, reason), n) in reasons {
            s.push_str(&format!("  skipped {n} cell(s) of {backend}: {reason}\n"));
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let cells: Vec<serde_json::Value> = self.outcomes.iter().map(outcome_json).collect();
        serde_json::json!({
            "cells": cells,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "seconds": self.seconds,
        })
    }
}

/// One line per cell: `PASS <id> rel_l2=.. (<criterion>, vs reference)`, `FAIL <id>: ..`,
/// `SKIP <id>: <backend> rejects: <REASON> (<detail>)`.
pub fn outcome_line(o: &CellOutcome) -> String {
    match &o.verdict {
        Verdict::Pass {
            rel_l2,
            criterion,
            oracle,
        } => {
            format!("PASS {} rel_l2={rel_l2:.2e} ({criterion}, vs {})", o.id, oracle.name())
        }
        Verdict::Fail { detail, .. } => format!("FAIL {}: {detail}", o.id),
        Verdict::Skip(s) => format!("SKIP {}: {s}", o.id),
    }
}

fn outcome_json(o: &CellOutcome) -> serde_json::Value {
    match &o.verdict {
        Verdict::Pass {
            rel_l2,
            criterion,
            oracle,
        } => serde_json::json!({
            "id": o.id, "verdict": "pass", "rel_l2": rel_l2, "criterion": criterion, "oracle": oracle.name(), "seconds": o.seconds,
        }),
        Verdict::Fail { detail, rel_l2 } => serde_json::json!({
            "id": o.id, "verdict": "fail", "detail": detail, "rel_l2": rel_l2, "seconds": o.seconds,
        }),
        Verdict::Skip(s) => serde_json::json!({
            "id": o.id, "verdict": "skip", "backend": s.backend, "reason": s.reason, "detail": s.detail, "seconds": o.seconds,
        }),
    }
}

/// Runs `cells` in order, calling `each` after every cell (for streaming output).
pub fn run_cells(cells: &[Cell], mut each: impl FnMut(&CellOutcome)) -> MatrixReport {
    let start = Instant::now();
    let mut runner = Runner::default();
    let mut outcomes = Vec::with_capacity(cells.len());
    for cell in cells {
        let o = runner.run(cell);
        each(&o);
        outcomes.push(o);
    }
    MatrixReport {
        outcomes,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// The whole matrix over every registered backend.
pub fn all_cells() -> Vec<Cell> {
    cells(moe::BACKEND_NAMES)
}
