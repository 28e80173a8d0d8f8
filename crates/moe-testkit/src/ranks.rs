//! Running a cell's layer over in-process ranks: one thread per rank, each with its own
//! `moe_comm::InProcessGroup` handle, its own `ParallelConfig` index and (under attention-DP)
//! its own share of the tokens, built through `moe::create_moe_with` like any caller would.

use std::sync::Arc;
use std::time::Duration;

use moe_comm::InProcessGroup;
use moe_core::{MoeConfig, MoeEnvironment, MoeError, Result};

use crate::data::LayerData;
use crate::matrix::Parallel;

/// A collective that has not finished in this long is a hang, not a slow test.
const COMM_TIMEOUT: Duration = Duration::from_secs(20);

/// Rows of each rank under attention-DP: `total` split as evenly as possible, the
/// remainder on the first ranks.
pub fn token_split(total: usize, world: usize) -> Vec<usize> {
    let (base, rem) = (total / world.max(1), total % world.max(1));
    (0..world).map(|r| base + usize::from(r < rem)).collect()
}

/// The layer output as seen by the ranks, each as f32 `[T, H]`: under attention-DP one
/// output (the ranks' rows concatenated in rank order), otherwise every rank's own copy.
pub fn run_layer_ranks(
    config: &MoeConfig,
    parallel: Parallel,
    env: &MoeEnvironment,
    data: &LayerData,
) -> Result<Vec<Vec<f32>>> {
    let world = parallel.world();
    let list = token_split(data.num_tokens, world);
    let outputs: Vec<Result<Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = InProcessGroup::world(world)
            .into_iter()
            .enumerate()
            .map(|(rank, group)| {
                let list = &list;
                scope.spawn(move || rank_forward(config, parallel, env, data, rank, group, list))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(MoeError::Comm {
                        peer: Some(rank),
                        detail: "rank thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let outputs: Vec<Vec<f32>> = outputs.into_iter().collect::<Result<_>>()?;
    Ok(if parallel.dp { vec![outputs.concat()] } else { outputs })
}

fn rank_forward(
    config: &MoeConfig,
    parallel: Parallel,
    env: &MoeEnvironment,
    data: &LayerData,
    rank: usize,
    group: InProcessGroup,
    list: &[usize],
) -> Result<Vec<f32>> {
    let mut c = config.clone();
    c.parallel.ep_rank = rank / parallel.tp;
    c.parallel.tp_rank = rank % parallel.tp;
    let parts = moe::LayerParts {
        group: Some(Arc::new(group)),
        comm_choice: parallel.comm.to_string(),
        comm_timeout: COMM_TIMEOUT,
        ..moe::LayerParts::default()
    };
    let options = moe::CreateOptions {
        env: Some(env.clone()),
        allow_degradation: false,
        parts,
    };
    let mut layer = moe::create_moe_with(c, options)?;
    layer.load_weights(&data.weights)?;
    let (start, rows) = if parallel.dp {
        (list[..rank].iter().sum(), list[rank])
    } else {
        (0, data.num_tokens)
    };
    let x = data.x.narrow_rows(start, rows)?;
    let logits = data.logits.narrow_rows(start, rows)?;
    let opts = moe::ForwardOptions {
        all_rank_num_tokens: parallel.dp.then(|| list.to_vec()),
        use_dp_padding: false,
    };
    let y = layer.forward_with(&x, &logits, &opts)?;
    y.expect_shape("rank output", &[rows, config.hidden_size])?;
    y.to_f32_vec("rank output")
}
