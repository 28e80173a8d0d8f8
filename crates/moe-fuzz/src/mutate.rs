//! Byte-level mutations driven by a seeded PRNG: bit flips, byte and token insertions, chunk
//! deletions and duplications, splices from other corpus entries, and number substitutions
//! that aim at the bounds (zero, one past a limit, 2^63, 1e308, NaN).

/// The workspace's seeded generator (`moe_core::prng`): a fuzz run is reproducible from its seed.
pub use moe_core::prng::SplitMix64 as Rng;

/// Text that parsers treat specially: structure, numbers at and past the limits, non-finite
/// spellings, YAML anchors and aliases.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"- ",
    b"\n  ",
    b"&a ",
    b"*a",
    b"!!int ",
    b"null",
    b"0",
    b"-1",
    b"1",
    b"65536",
    b"65537",
    b"16777217",
    b"1000000000000",
    b"18446744073709551615",
    b"9223372036854775808",
    b"576460752303423489",
    b"1e308",
    b"-1e308",
    b"NaN",
    b"Infinity",
    b"-0",
    b"\"dtype\":\"F32\"",
    b"\"shape\":[",
    b"\"data_offsets\":[",
    b"\"num_hidden_layers\":",
    b"\"num_slots\":",
    b"num_slots: ",
    b"initial_global_assignments:",
    b"\"load\":",
];

/// Numbers substituted for a number already in the input.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "255",
    "256",
    "65535",
    "65536",
    "65537",
    "16777216",
    "1000000000000",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "-1",
    "1e308",
    "2.5",
    "NaN",
];

/// One to eight mutations of `input`, drawing splices from `corpus`; the result is cut to
/// `max_len` bytes.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.modulo(8) {
        let len = out.len();
        match rng.modulo(9) {
            0 if len > 0 => {
                let i = rng.modulo(len);
                out[i] ^= 1 << rng.modulo(8);
            }
            1 if len > 0 => {
                let i = rng.modulo(len);
                out[i] = rng.next_u64() as u8;
            }
            2 => {
                let t = TOKENS[rng.modulo(TOKENS.len())];
                let at = rng.modulo(len + 1);
                out.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.modulo(len);
                let b = (a + 1 + rng.modulo(16)).min(len);
                out.drain(a..b);
            }
            4 if len > 0 => {
                // Repeat a chunk, sometimes many times (deep nesting, long lists).
                let a = rng.modulo(len);
                let b = (a + 1 + rng.modulo(32)).min(len);
                let chunk = out[a..b].to_vec();
                let times = if rng.modulo(4) == 0 { 1 + rng.modulo(2000) } else { 1 };
                for _ in 0..times {
                    out.splice(b..b, chunk.iter().copied());
                }
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.modulo(corpus.len())];
                if !other.is_empty() {
                    let a = rng.modulo(other.len());
                    let b = (a + 1 + rng.modulo(64)).min(other.len());
                    let at = rng.modulo(len + 1);
                    out.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 | 7 => replace_number(rng, &mut out),
            _ if len > 0 => out.truncate(rng.modulo(len)),
            _ => {}
        }
    }
    out.truncate(max_len);
    out
}

/// Replaces one run of ASCII digits with a number from [`NUMBERS`].
fn replace_number(rng: &mut Rng, out: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let a = starts[rng.modulo(starts.len())];
    let b = (a..out.len()).find(|&i| !out[i].is_ascii_digit()).unwrap_or(out.len());
    let n = NUMBERS[rng.modulo(NUMBERS.len())];
    out.splice(a..b, n.bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible_from_the_seed_and_bounded() {
        let corpus = vec![b"{\"a\": [1, 2, 3]}".to_vec()];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| mutate(&mut rng, &corpus[0], &corpus, 4096))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert!(run(5).iter().all(|m| m.len() <= 4096));
        let mut v = b"x: 12, y: 3".to_vec();
        replace_number(&mut Rng::new(1), &mut v);
        assert_ne!(v, b"x: 12, y: 3".to_vec());
    }
}
