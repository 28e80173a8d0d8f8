//! The inputs every stage draws (deterministic random tensors and routings from (seed, rank,
//! purpose)) and the byte-for-byte comparison of a result with its expectation.

use moe_core::prng::{GAMMA, SplitMix64};
use moe_core::{DType, Deadline, Result, Tensor};
use moe_kernels::cuda::download;

use crate::DEADLINE;

/// The workspace's SplitMix64 (`moe_core::prng`), one stream per (seed, rank, purpose).
pub(crate) struct Rng(SplitMix64);

impl Rng {
    pub(crate) fn new(seed: u64, rank: usize, purpose: u64) -> Rng {
        let mut g =
            SplitMix64::new(seed ^ (rank as u64).wrapping_mul(GAMMA) ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03));
        // The first draw is skipped (as the streams the recorded runs used did).
        g.next_u64();
        Rng(g)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        self.0.next_sym()
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.modulo(n)
    }
}

pub(crate) fn random(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    Tensor::from_f32_as(dtype, vec![rows, cols], &v)
}

/// `topk` distinct expert ids per token, uniformly at random.
pub(crate) fn routing(tokens: usize, experts: usize, topk: usize, rng: &mut Rng) -> Vec<i32> {
    let mut pool: Vec<i32> = (0..experts as i32).collect();
    let mut out = Vec::with_capacity(tokens * topk);
    for _ in 0..tokens {
        for j in 0..topk {
            let pick = j + rng.below(experts - j);
            pool.swap(j, pick);
            out.push(pool[j]);
        }
    }
    out
}

/// Owner of every expert (slot), `experts` spread evenly over `world` ranks.
pub(crate) fn owners(experts: usize, world: usize) -> Vec<usize> {
    (0..experts).map(|e| e * world / experts).collect()
}

pub(crate) fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    Ok(download(t)?.view()?.data.into_owned())
}

/// Pushes a failure when `got` and `want` differ in dtype, shape or any byte.
pub(crate) fn same(bad: &mut Vec<String>, what: &str, got: &Tensor, want: &Tensor) -> Result<()> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        bad.push(format!(
            "{what}: got {} {:?}, want {} {:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
        return Ok(());
    }
    if bytes_of(got)? != bytes_of(want)? {
        let diff = if got.dtype().is_float_activation() {
            let (a, b) = (download(got)?.to_f32_vec("got")?, download(want)?.to_f32_vec("want")?);
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
        } else {
            f32::NAN
        };
        bad.push(format!("{what}: bytes differ (max abs diff {diff:e})"));
    }
    Ok(())
}

pub(crate) fn soon() -> Deadline {
    Deadline::after(DEADLINE)
}
