//! Runs matrix cells: decide (from `can_implement`), build the layer with `moe::create_moe_with`,
//! load the cell's weights, forward, and compare with the oracle under the dtype's bound.
//!
//! The oracle of a cell is the reference backend on one rank, unchunked, on the same data;
//! the reference backend's own single-rank unchunked cells are compared with the naive f64
//! oracle instead. Multi-rank cells are judged by their worst rank.

use std::collections::HashMap;
use std::time::Instant;

use moe_core::{MoeConfig, MoeEnvironment, QuantAlgo, Result, Tensor, WeightSource};

use crate::data::{LayerData, layer_data};
use crate::matrix::{Cell, Parallel};
use crate::oracle::naive_moe;
use crate::ranks::run_layer_ranks;
use crate::skip::{Decision, SkipReason, decide, record_skip, required_backends};
use crate::tolerance::{check_accuracy, quant_tolerance, rel_l2, rel_l2_bound};

/// The backend every other backend is compared against.
pub const ORACLE_BACKEND: &str = "reference";

/// What a cell was compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oracle {
    /// The reference backend, unchunked, on the same data.
    Reference,
    /// The naive f64 layer of [`crate::oracle`].
    Naive,
}

impl Oracle {
    pub fn name(self) -> &'static str {
        match self {
            Oracle::Reference => "reference",
            Oracle::Naive => "naive",
        }
    }
}

/// The outcome of one cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// `criterion` says what was checked (`rel L2 <= 2e-2`, or the §7.5 tolerance).
    Pass {
        rel_l2: f64,
        criterion: String,
        oracle: Oracle,
    },
    Fail {
        detail: String,
        rel_l2: Option<f64>,
    },
    Skip(SkipReason),
}

/// One cell's result.
#[derive(Clone, Debug, PartialEq)]
pub struct CellOutcome {
    pub id: String,
    pub verdict: Verdict,
    pub seconds: f64,
}

/// Builds `config`'s layer (no degradation: a cell runs on the backend it names or not at
/// all), loads `weights` and runs `x`, `logits`. Returns the output as f32.
pub fn run_layer(
    config: MoeConfig,
    env: &MoeEnvironment,
    weights: &dyn WeightSource,
    x: &Tensor,
    logits: &Tensor,
) -> Result<Vec<f32>> {
    let dtype = config.dtype;
    let expected_shape = [x.rows(), config.hidden_size];
    let options = moe::CreateOptions {
        env: Some(env.clone()),
        allow_degradation: false,
        ..Default::default()
    };
    let mut layer = moe::create_moe_with(config, options)?;
    layer.load_weights(weights)?;
    let y = layer.forward(x, logits)?;
    y.expect_shape("layer output", &expected_shape)?;
    y.expect_dtype("layer output", dtype)?;
    y.to_f32_vec("layer output")
}

/// Runs cells, sharing data and oracle outputs between cells of one data key.
pub struct Runner {
    env: MoeEnvironment,
    run_id: String,
    required: Vec<String>,
    data: HashMap<String, LayerData>,
    oracles: HashMap<String, (Vec<f32>, Oracle)>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new(moe::probe_environment())
    }
}

impl Runner {
    /// A runner whose verdicts are taken against `env` (probed once, as the factory does).
    pub fn new(env: MoeEnvironment) -> Runner {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Runner {
            env,
            run_id: format!("{now}-{}", std::process::id()),
            required: required_backends(),
            data: HashMap::new(),
            oracles: HashMap::new(),
        }
    }

    /// Runs one cell; never panics on a backend error (that is a failed cell).
    pub fn run(&mut self, cell: &Cell) -> CellOutcome {
        let start = Instant::now();
        let id = cell.id();
        let verdict = match self.verdict(cell) {
            Ok(v) => v,
            Err(e) => Verdict::Fail {
                detail: e.to_string(),
                rel_l2: None,
            },
        };
        let verdict = match verdict {
            Verdict::Skip(skip) => {
                record_skip(&self.run_id, &id, &skip);
                if self.required.contains(&skip.backend) {
                    Verdict::Fail {
                        detail: format!("MOE_REQUIRE lists `{}`, which skipped: {skip}", skip.backend),
                        rel_l2: None,
                    }
                } else {
                    Verdict::Skip(skip)
                }
            }
            v => v,
        };
        CellOutcome {
            id,
            verdict,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    fn verdict(&mut self, cell: &Cell) -> Result<Verdict> {
        let config = cell.config();
        if let Decision::Skip(skip) = decide(&config, &self.env)? {
            return Ok(Verdict::Skip(skip));
        }
        let key = cell.data_key();
        if !self.data.contains_key(&key) {
            self.data.insert(key.clone(), layer_data(cell)?);
        }
        let is_oracle_cell =
            cell.backend == ORACLE_BACKEND && cell.chunking.is_none() && cell.parallel == Parallel::SINGLE;
        let (expected, oracle) = if is_oracle_cell {
            (naive_moe(&config, &self.data[&key])?, Oracle::Naive)
        } else {
            self.oracle_output(cell, &key)?
        };
        let data = &self.data[&key];
        // Several ranks: every rank's view must match (the worst one is reported).
        let outs = if cell.parallel.world() > 1 {
            run_layer_ranks(&config, cell.parallel, &self.env, data)?
        } else {
            vec![run_layer(config, &self.env, &data.weights, &data.x, &data.logits)?]
        };
        // The worst rank decides; NaN (from a non-finite output) counts as worst.
        let errs: Vec<f64> = outs.iter().map(|o| rel_l2(o, &expected)).collect();
        let worst = (0..errs.len())
            .max_by(|&a, &b| {
                errs[a].partial_cmp(&errs[b]).unwrap_or(if errs[a].is_nan() {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Less
                })
            })
            .unwrap_or(0);
        let (out, err) = (&outs[worst], errs[worst]);
        Ok(if cell.quant == QuantAlgo::None {
            // Unquantized: every element must agree up to rounding (see `rel_l2_bound`).
            let bound = rel_l2_bound(cell.dtype);
            if err <= bound {
                Verdict::Pass {
                    rel_l2: err,
                    criterion: format!("rel L2 <= {bound:.0e}"),
                    oracle,
                }
            } else {
                Verdict::Fail {
                    detail: format!("rel L2 {err:.3e} > {bound:.0e} against the {} oracle", oracle.name()),
                    rel_l2: Some(err),
                }
            }
        } else {
            // Quantized: TensorRT-LLM's §7.5 criterion for the format, and, because the
            // oracle emulates the format exactly (decoded weights, activation QDQ), the
            // dtype's relative-L2 bound too: a kernel error of a few percent passes §7.5's
            // outlier-tolerant criterion but not this one.
            let tol = quant_tolerance(cell.quant);
            let bound = rel_l2_bound(cell.dtype);
            let criterion = format!(
                "rtol {} atol {} percent {}, rel L2 <= {bound:.0e}",
                tol.rtol, tol.atol, tol.percent
            );
            match check_accuracy(out, &expected, tol) {
                Ok(_) if err <= bound => Verdict::Pass {
                    rel_l2: err,
                    criterion,
                    oracle,
                },
                Ok(_) => Verdict::Fail {
                    detail: format!("rel L2 {err:.3e} > {bound:.0e} against the {} oracle", oracle.name()),
                    rel_l2: Some(err),
                },
                Err(detail) => Verdict::Fail {
                    detail: format!("{detail} against the {} oracle", oracle.name()),
                    rel_l2: Some(err),
                },
            }
        })
    }

    /// The reference backend's unchunked output for `key`, or the naive one when the
    /// reference backend cannot implement the cell.
    fn oracle_output(&mut self, cell: &Cell, key: &str) -> Result<(Vec<f32>, Oracle)> {
        if let Some(o) = self.oracles.get(key) {
            return Ok(o.clone());
        }
        let oracle_cell = Cell {
            backend: ORACLE_BACKEND.into(),
            chunking: None,
            parallel: Parallel::SINGLE,
            ..cell.clone()
        };
        let config = oracle_cell.config();
        let data = &self.data[key];
        let result = match decide(&config, &self.env)? {
            Decision::Run => (
                run_layer(config, &self.env, &data.weights, &data.x, &data.logits)?,
                Oracle::Reference,
            ),
            Decision::Skip(_) => (naive_moe(&config, data)?, Oracle::Naive),
        };
        self.oracles.insert(key.to_string(), result.clone());
        Ok(result)
    }
}
