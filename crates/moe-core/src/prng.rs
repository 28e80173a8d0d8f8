//! The workspace's one pseudo-random generator, SplitMix64, for seeded test data, benchmark
//! weights and fuzz-free reproducible inputs: the same seed gives the same stream on every
//! platform and dependency version, with no dependency. It lives in the lowest crate so that
//! tests, examples and the CLI of every layer share it; the draws below are the ones their
//! fixtures and snapshots were generated with, so none may change.

/// SplitMix64's increment (the golden ratio in 64 bits): the state after `i` draws is
/// `seed + i * GAMMA`, which makes the stream seekable (chunks of a stream fill in parallel).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function of a state: a bijective 64-bit mix, also usable alone as a
/// counter-based hash.
pub const fn mix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, full period, good enough statistics
/// for test data and synthetic weights. Not for anything that must be unpredictable.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
    /// The second Box-Muller sample of [`SplitMix64::normal`], kept for the next call.
    spare: Option<f64>,
}

impl SplitMix64 {
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[-1, 1)` from the top 24 bits (exact in f32).
    pub fn next_sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// `n` values uniform in `[-a, a)` ([`SplitMix64::next_sym`] times `a`).
    pub fn fill(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_sym() * a).collect()
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` by multiply-shift (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// `next_u64() % n` (0 when `n == 0`, drawing nothing): slightly biased, but the draw some
    /// fixtures and the fuzzer's seeded runs were made with.
    pub fn modulo(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// A standard normal sample (Box-Muller, both outputs used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 - u keeps the log argument in (0, 1].
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `n` samples of `N(0, std^2)` as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn the_stream_is_seekable_by_gamma() {
        let mut a = SplitMix64::new(5);
        let _ = a.next_u64();
        let _ = a.next_u64();
        let mut b = SplitMix64::new(5u64.wrapping_add(2u64.wrapping_mul(GAMMA)));
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn draws_are_deterministic_and_bounded() {
        let a = SplitMix64::new(7).fill(1000, 2.0);
        assert_eq!(a, SplitMix64::new(7).fill(1000, 2.0));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        assert_ne!(a, SplitMix64::new(8).fill(1000, 2.0));
        let mut r = SplitMix64::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7 && r.modulo(7) < 7));
        assert_eq!((r.below(0), r.modulo(0)), (0, 0));
    }
}
