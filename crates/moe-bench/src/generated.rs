//! Benchmark weights generated in memory, one tensor at a time as the layer asks for it: the
//! values of the on-disk cache ([`crate::cache`]) bit for bit, without the cache.
//!
//! `--backend cuda` uses this instead of the cache: the GPU machine runs the bench once, far
//! from the checkout, and DeepSeek-V3 in bf16 is 22.5 GB that need not be written to its disk
//! first. Nothing is held: [`GeneratedWeights::get`] generates the requested matrix (in
//! parallel: splitmix64 is a counter generator, so each chunk of a matrix starts from its own
//! offset of the same stream) and hands it over as an owned view. For FP8 block weights a
//! matrix is quantized once into codes and scales; the one of the two not asked for waits in
//! a small stash until the loader asks for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, MoeError, TensorView, WeightSource};
use rayon::prelude::*;

use crate::cache::stream_seed;
use crate::preset::{FP8_BLOCK, Preset, WeightFormat};
use moe_core::prng::{GAMMA, SplitMix64};

/// Elements generated per parallel task.
const CHUNK: usize = 1 << 16;

const WEIGHT: &str = "weight";
const SCALE: &str = "weight_scale_inv";

/// The expert weights of a preset, generated on request (see the module docs).
#[derive(Debug)]
pub struct GeneratedWeights {
    preset: Preset,
    seed: u64,
    /// FP8 tensors quantized alongside a requested one, by name, until requested.
    pending: Mutex<HashMap<String, Owned>>,
}

/// One generated tensor.
#[derive(Debug)]
struct Owned {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Owned {
    fn into_view(self) -> TensorView<'static> {
        TensorView {
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(self.data),
        }
    }
}

impl GeneratedWeights {
    pub fn new(preset: Preset, seed: u64) -> GeneratedWeights {
        GeneratedWeights {
            preset,
            seed,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// (stream, projection, rows, cols) of an expert's matrices, as the cache numbers them.
    fn matrices(&self) -> [(u64, Proj, usize, usize); 3] {
        let (h, i) = (self.preset.hidden, self.preset.inter);
        [(0, Proj::W1, i, h), (1, Proj::W3, i, h), (2, Proj::W2, h, i)]
    }

    /// Whether the weights of `format` are generated here (the device harness refuses the
    /// others before it builds a layer).
    pub fn generates(format: WeightFormat) -> bool {
        matches!(format, WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::Fp8Block)
    }

    fn suffixes(&self) -> &'static [&'static str] {
        match self.preset.weights {
            WeightFormat::F32 | WeightFormat::Bf16 => &[WEIGHT],
            WeightFormat::Fp8Block => &[WEIGHT, SCALE],
            // Not generated (`generates`): no tensors.
            _ => &[],
        }
    }

    fn take_pending(&self, name: &str) -> Option<Owned> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
    }

    fn generate(&self, e: usize, proj: Proj, suffix: &str) -> moe_core::Result<Option<Owned>> {
        let Some(&(k, _, rows, cols)) = self.matrices().iter().find(|m| m.1 == proj) else {
            return Ok(None);
        };
        let first = stream_seed(self.seed, 1 + k, e as u64);
        let a = (3.0 / cols as f32).sqrt();
        let n = rows * cols;
        let shape = vec![rows, cols];
        Ok(match (self.preset.weights, suffix) {
            (WeightFormat::F32, WEIGHT) => Some(Owned {
                dtype: DType::F32,
                shape,
                data: uniform_bytes(first, n, a, 4, |v, out| out.copy_from_slice(&v.to_le_bytes())),
            }),
            (WeightFormat::Bf16, WEIGHT) => Some(Owned {
                dtype: DType::BF16,
                shape,
                data: uniform_bytes(first, n, a, 2, |v, out| {
                    out.copy_from_slice(&bf16_bits(v).to_le_bytes())
                }),
            }),
            (WeightFormat::Fp8Block, WEIGHT | SCALE) => {
                let (codes, scales) = fp8_block_parallel(&uniform(first, n, a), rows, cols)?;
                let codes = Owned {
                    dtype: DType::F8E4M3,
                    shape,
                    data: codes,
                };
                let scales = Owned {
                    dtype: DType::F32,
                    shape: vec![rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)],
                    data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                };
                let (wanted, other, other_suffix) = if suffix == WEIGHT {
                    (codes, scales, SCALE)
                } else {
                    (scales, codes, WEIGHT)
                };
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(expert_tensor_name(e, proj, other_suffix), other);
                Some(wanted)
            }
            _ => None,
        })
    }
}

/// `"{e}.{w1|w2|w3}.{suffix}"` split into its parts.
fn parse(name: &str) -> Option<(usize, Proj, &str)> {
    let mut parts = name.splitn(3, '.');
    let e = parts.next()?.parse().ok()?;
    let proj = match parts.next()? {
        "w1" => Proj::W1,
        "w2" => Proj::W2,
        "w3" => Proj::W3,
        _ => return None,
    };
    Some((e, proj, parts.next()?))
}

impl WeightSource for GeneratedWeights {
    fn get(&self, name: &str) -> moe_core::Result<Option<TensorView<'_>>> {
        if let Some(t) = self.take_pending(name) {
            return Ok(Some(t.into_view()));
        }
        let Some((e, proj, suffix)) = parse(name) else {
            return Ok(None);
        };
        if e >= self.preset.experts || !self.suffixes().contains(&suffix) {
            return Ok(None);
        }
        Ok(self.generate(e, proj, suffix)?.map(Owned::into_view))
    }

    fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in 0..self.preset.experts {
            for (_, proj, _, _) in self.matrices() {
                for suffix in self.suffixes() {
                    out.push(expert_tensor_name(e, proj, suffix));
                }
            }
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "generated {} weights of {} (seed {})",
            self.preset.weights, self.preset.name, self.seed
        )
    }
}

/// `n` values uniform in [-a, a): exactly `SplitMix64::new(first).fill(n, a)`, in parallel.
pub fn uniform(first: u64, n: usize, a: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64::new(first.wrapping_add(((c * CHUNK) as u64).wrapping_mul(GAMMA)));
        for v in chunk {
            *v = rng.next_sym() * a;
        }
    });
    out
}

/// The values of [`uniform`] encoded by `put` into `width` little-endian bytes each, without
/// an f32 copy of the whole matrix.
fn uniform_bytes(first: u64, n: usize, a: f32, width: usize, put: impl Fn(f32, &mut [u8]) + Sync) -> Vec<u8> {
    let mut out = vec![0u8; n * width];
    out.par_chunks_mut(CHUNK * width).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64::new(first.wrapping_add(((c * CHUNK) as u64).wrapping_mul(GAMMA)));
        for b in chunk.chunks_exact_mut(width) {
            put(rng.next_sym() * a, b);
        }
    });
    out
}

/// f32 to bf16 bits, rounding to nearest even (as `half::bf16::from_f32`, which the cache's
/// tensors go through).
pub fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        // NaN: keep it quiet.
        return ((x >> 16) | 0x0040) as u16;
    }
    let round_bit = 0x0000_8000u32;
    if x & round_bit != 0 && x & (3 * round_bit - 1) != 0 {
        (x >> 16) as u16 + 1
    } else {
        (x >> 16) as u16
    }
}

/// `moe_quant::quantize::fp8_block` of a `[rows, cols]` matrix, one band of [`FP8_BLOCK`]
/// rows per task: a scale block never spans two bands, so the result is the whole-matrix
/// quantizer's. Returns the E4M3 codes (row-major) and the `[rows/128, cols/128]` scales.
pub fn fp8_block_parallel(w: &[f32], rows: usize, cols: usize) -> moe_core::Result<(Vec<u8>, Vec<f32>)> {
    if w.len() != rows * cols {
        return Err(MoeError::shape(
            "fp8 block matrix",
            format!("{rows} x {cols}"),
            &[w.len()],
        ));
    }
    let bands: Vec<(Vec<u8>, Vec<f32>)> = (0..rows.div_ceil(FP8_BLOCK))
        .into_par_iter()
        .map(|b| {
            let (r0, r1) = (b * FP8_BLOCK, ((b + 1) * FP8_BLOCK).min(rows));
            let q = moe_quant::quantize::fp8_block(&w[r0 * cols..r1 * cols], r1 - r0, cols, [FP8_BLOCK, FP8_BLOCK])?;
            let (mut codes, mut scales) = (None, None);
            for (suffix, t) in q {
                match suffix {
                    WEIGHT => codes = Some(t.view()?.data.into_owned()),
                    SCALE => scales = Some(t.to_f32_vec(SCALE)?),
                    _ => {}
                }
            }
            match (codes, scales) {
                (Some(c), Some(s)) => Ok((c, s)),
                _ => Err(MoeError::MissingTensor {
                    name: format!("{WEIGHT} or {SCALE} from the FP8 block quantizer"),
                }),
            }
        })
        .collect::<moe_core::Result<_>>()?;
    let (mut codes, mut scales) = (Vec::with_capacity(rows * cols), Vec::new());
    for (c, s) in bands {
        codes.extend_from_slice(&c);
        scales.extend_from_slice(&s);
    }
    Ok((codes, scales))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::expert_tensors;
    use moe_core::Tensor;

    #[test]
    fn parallel_uniform_is_the_sequential_stream() {
        let n = 2 * CHUNK + 5;
        let want = SplitMix64::new(77).fill(n, 0.5);
        assert_eq!(uniform(77, n, 0.5), want);
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut vals = SplitMix64::new(5).fill(10_000, 3.0);
        vals.extend([
            0.0,
            -0.0,
            1.0,
            // Ties: 1 + 2^-8 rounds down to even, 1 + 3 * 2^-8 up to even.
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ]);
        let t = Tensor::from_f32_as(DType::BF16, vec![vals.len()], &vals).unwrap();
        let want = t.view().unwrap().data.into_owned();
        let got: Vec<u8> = vals.iter().flat_map(|&v| bf16_bits(v).to_le_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn banded_fp8_quantization_is_the_whole_matrix_one() {
        let (rows, cols) = (300, 260);
        let w = SplitMix64::new(9).fill(rows * cols, 0.1);
        let (codes, scales) = fp8_block_parallel(&w, rows, cols).unwrap();
        let whole = moe_quant::quantize::fp8_block(&w, rows, cols, [FP8_BLOCK, FP8_BLOCK]).unwrap();
        for (suffix, t) in whole {
            match suffix {
                WEIGHT => assert_eq!(codes, t.view().unwrap().data.into_owned()),
                SCALE => assert_eq!(scales, t.to_f32_vec("s").unwrap()),
                other => panic!("unexpected tensor {other}"),
            }
        }
    }

    #[test]
    fn generated_tensors_are_the_cache_tensors() {
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Fp8Block] {
            let p = Preset::find("tiny").unwrap().with_weights(format);
            let g = GeneratedWeights::new(p, 3);
            let names = g.names();
            assert_eq!(names.len(), p.experts * 3 * g.suffixes().len());
            for e in [0, p.experts - 1] {
                for (name, t) in expert_tensors(&p, 3, e).unwrap() {
                    let want = t.view().unwrap();
                    let got = g.get(&name).unwrap().unwrap_or_else(|| panic!("{name} missing"));
                    assert!(names.contains(&name), "{name} not listed");
                    assert_eq!((got.dtype, &got.shape), (want.dtype, &want.shape), "{name}");
                    assert!(got.data == want.data, "{name}: bytes differ");
                }
            }
            assert!(g.get("0.w4.weight").unwrap().is_none());
            assert!(g.get(&format!("{}.w1.weight", p.experts)).unwrap().is_none());
            assert!(g.get("0.w1.bias").unwrap().is_none());
        }
    }
}
