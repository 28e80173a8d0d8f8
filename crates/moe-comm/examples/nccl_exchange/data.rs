//! The inputs every stage draws (deterministic random tensors and routings from (seed, rank,
//! purpose)) and the byte-for-byte comparison of a result with its expectation.

use moe_core::{DType, Deadline, Result, Tensor};
use moe_kernels::cuda::download;

use crate::DEADLINE;

/// splitmix64: deterministic streams from (seed, rank, purpose).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, rank: usize, purpose: u64) -> Rng {
        let mut r =
            Rng(seed ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
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
