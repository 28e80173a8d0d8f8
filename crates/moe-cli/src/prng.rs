//! A tiny deterministic PRNG (splitmix64) for the synthetic layer: the same seed gives the
//! same weights and inputs on every machine, with no dependency.

/// splitmix64 (Steele, Lea, Flood 2014).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1) from the top 24 bits (exact in f32).
    pub fn next_sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// `n` values uniform in [-a, a).
    pub fn fill(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_sym() * a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_bounded() {
        let a = SplitMix64::new(7).fill(1000, 2.0);
        assert_eq!(a, SplitMix64::new(7).fill(1000, 2.0));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        assert_ne!(a, SplitMix64::new(8).fill(1000, 2.0));
    }
}
