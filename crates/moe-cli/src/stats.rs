//! Run statistics: routing balance (tokens per expert) and throughput.

use moe_core::{RoutingMethod, Tensor};

/// Tokens routed to each expert, from the router logits of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Balance {
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    /// max / mean: 1.0 is perfectly balanced; the slowest expert bounds a step.
    pub max_over_mean: f64,
    pub per_expert: Vec<usize>,
}

impl Balance {
    /// Applies `routing` to `logits` `[T, E]` and counts assignments per expert.
    pub fn from_logits(routing: &RoutingMethod, logits: &Tensor) -> anyhow::Result<Balance> {
        let (t, e) = (logits.rows(), logits.row_len());
        let l = logits.to_f32_vec("router logits")?;
        let out = routing.apply_host(&l, t, e)?;
        let mut counts = vec![0usize; e];
        for &id in &out.ids {
            if let Some(c) = usize::try_from(id).ok().and_then(|i| counts.get_mut(i)) {
                *c += 1;
            }
        }
        Ok(Balance::from_counts(counts))
    }

    pub fn from_counts(per_expert: Vec<usize>) -> Balance {
        let min = per_expert.iter().copied().min().unwrap_or(0);
        let max = per_expert.iter().copied().max().unwrap_or(0);
        let mean = per_expert.iter().sum::<usize>() as f64 / per_expert.len().max(1) as f64;
        let max_over_mean = if mean > 0.0 { max as f64 / mean } else { 0.0 };
        Balance {
            min,
            max,
            mean,
            max_over_mean,
            per_expert,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "routing balance: tokens per expert min {} / max {} / mean {:.1}, max/mean {:.2}\n",
            self.min, self.max, self.mean, self.max_over_mean
        )
    }
}

/// FLOPs of the routed experts of a gated (SwiGLU) layer: `2 · T · k · 3 · H · I`.
pub fn routed_flops(tokens: usize, top_k: usize, hidden: usize, inter: usize) -> f64 {
    2.0 * tokens as f64 * top_k as f64 * 3.0 * hidden as f64 * inter as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_of_counts() {
        let b = Balance::from_counts(vec![2, 4, 6]);
        assert_eq!((b.min, b.max), (2, 6));
        assert!((b.mean - 4.0).abs() < 1e-12 && (b.max_over_mean - 1.5).abs() < 1e-12);
    }
}
