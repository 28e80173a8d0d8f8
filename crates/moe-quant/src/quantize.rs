//! Canonical quantizers: f32 weights `[out, in]` (row-major) to the checkpoint tensors the
//! quant methods of this crate load, as `(suffix, tensor)` pairs (`{e}.{wX}.{suffix}` once
//! named; [`quantize_expert`] names them), and their inverse ([`dequantize_matrix`],
//! [`dequantize`]). For `moe quantize`, the test kit, checkpoint loaders that need dense
//! weights, and round-trip tests.
//!
//! Every element step is a codec of `moe_kernels::codec` (bit-exact E4M3, E2M1, UE8M0, INT4,
//! INT8); this module only chooses scales, following the exporters of each format:
//! - FP8 per tensor (ModelOpt): `weight_scale = amax / 448`, `q = e4m3_sat(w / weight_scale)`;
//!   `input_scale = input_amax / 448`.
//! - FP8 block (DeepSeek): per `b0 x b1` block `s = amax / 448`, stored as `weight_scale_inv`
//!   (the multiplier).
//! - NVFP4 (ModelOpt): `weight_scale_2 = amax / (448·6)`; per 16 inputs
//!   `sf = e4m3_sat(amax_block / (6·s2))`, `q = e2m1(w / (sf·s2))` (0 where `sf` is 0);
//!   `input_scale = input_amax / (448·6)`.
//! - MXFP4 (GPT-OSS, triton's `downcast_to_mxfp` default): per 32 inputs the smallest power of
//!   two `>= amax / 6`, as UE8M0, `q = e2m1(w / scale)`. (The OCP MX v1.0 rule
//!   `floor(log2(amax)) − 2` clips the block's largest values to 6; on uniform data its round
//!   trip error is 14% against 10% for the round-up.)
//! - INT4 (AWQ): asymmetric per group, unsigned codes and zero point (`quantize_int4_grouped`).
//! - INT8: symmetric per output row, `amax / 127`.
//!
//! A scale with nothing to scale (an all-zero matrix or block, a zero `input_amax`) is 1.0, so
//! every stored scale is positive and finite, as the loaders require. Amaxima are over finite
//! values.

use moe_core::quant_format::{ActivationQuant, Extent};
use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, HostStorage, MoeError, QuantAlgo, QuantConfig, Result, Tensor, WeightSource};
use moe_kernels::codec::CodecError;
use moe_kernels::codec::e8m0::{e8m0_from_f32_ceil, e8m0_to_f32};
use moe_kernels::codec::fp4::{E2M1_MAX, decode_fp4_packed, quantize_fp4_packed};
use moe_kernels::codec::fp8::{E4M3_MAX, e4m3_to_f32, f32_to_e4m3_sat, quantize_e4m3_sat};
use moe_kernels::codec::int::{
    Int4Grouped, dequantize_int8_per_channel, quantize_int4_grouped, quantize_int8_per_channel,
};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::weight_slice::{MXFP4_BLOCK, NVFP4_BLOCK};

use crate::{Fp8BlockMethod, Int4GroupMethod};

/// Checkpoint tensors of one matrix, by suffix (`weight`, `weight_scale`, ...).
pub type Quantized = Vec<(&'static str, Tensor)>;

/// Largest finite `|w|` (0 when there is none).
pub fn amax(w: &[f32]) -> f32 {
    w.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `amax / qmax`, or 1.0 when that is not a positive finite number.
fn scale_for(amax: f32, qmax: f32) -> f32 {
    let s = amax / qmax;
    if s > 0.0 && s.is_finite() { s } else { 1.0 }
}

fn check_matrix(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(MoeError::shape(
            "matrix to quantize",
            format!("[{rows}, {cols}]"),
            &[w.len()],
        ));
    }
    Ok(())
}

fn divides(cols: usize, unit: usize, what: &str) -> Result<()> {
    if unit == 0 || !cols.is_multiple_of(unit) {
        return Err(MoeError::shape(
            "matrix to quantize",
            format!("a column count that is a multiple of {unit} ({what})"),
            &[cols],
        ));
    }
    Ok(())
}

fn codec_err(e: CodecError) -> MoeError {
    MoeError::shape("matrix to quantize", e.to_string(), &[])
}

fn bytes(dtype: DType, shape: Vec<usize>, b: Vec<u8>) -> Result<Tensor> {
    Tensor::from_host(dtype, shape, HostStorage::Bytes(b))
}

fn scalar(v: f32) -> Result<Tensor> {
    Tensor::from_f32(vec![], vec![v])
}

/// FP8 per-tensor: `weight` F8E4M3 `[rows, cols]`, `weight_scale` and `input_scale` f32 `[]`.
/// `weight_amax` overrides the matrix's own amax (pass the larger of w1 and w3 to give them a
/// common scale, as ModelOpt does for fused gate/up).
pub fn fp8_per_tensor(
    w: &[f32],
    rows: usize,
    cols: usize,
    weight_amax: Option<f32>,
    input_amax: f32,
) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    let scale = scale_for(weight_amax.unwrap_or_else(|| amax(w)), E4M3_MAX);
    let mut codes = vec![0u8; w.len()];
    quantize_e4m3_sat(w, scale, &mut codes).map_err(codec_err)?;
    Ok(vec![
        ("weight", bytes(DType::F8E4M3, vec![rows, cols], codes)?),
        ("weight_scale", scalar(scale)?),
        ("input_scale", scalar(scale_for(input_amax, E4M3_MAX))?),
    ])
}

/// FP8 block: `weight` F8E4M3 `[rows, cols]`, `weight_scale_inv` f32
/// `[ceil(rows / b0), ceil(cols / b1)]` (the multiplier of each block).
pub fn fp8_block(w: &[f32], rows: usize, cols: usize, block: [usize; 2]) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    let [b0, b1] = Fp8BlockMethod::new(block)?.block();
    let (nr, nc) = (rows.div_ceil(b0), cols.div_ceil(b1));
    let mut scales = vec![0.0f32; nr * nc];
    for (i, s) in scales.iter_mut().enumerate() {
        let (br, bc) = (i / nc, i % nc);
        let (c0, c1) = (bc * b1, ((bc + 1) * b1).min(cols));
        let m = (br * b0..((br + 1) * b0).min(rows))
            .map(|r| amax(&w[r * cols + c0..r * cols + c1]))
            .fold(0.0, f32::max);
        *s = scale_for(m, E4M3_MAX);
    }
    let codes: Vec<u8> = w
        .iter()
        .enumerate()
        .map(|(i, &x)| f32_to_e4m3_sat(x / scales[(i / cols / b0) * nc + (i % cols) / b1]))
        .collect();
    Ok(vec![
        ("weight", bytes(DType::F8E4M3, vec![rows, cols], codes)?),
        ("weight_scale_inv", Tensor::from_f32(vec![nr, nc], scales)?),
    ])
}

/// NVFP4: `weight` u8 `[rows, cols / 2]`, `weight_scale` F8E4M3 `[rows, cols / 16]`,
/// `weight_scale_2` and `input_scale` f32 `[]`. `weight_amax` as for [`fp8_per_tensor`]: the
/// NVFP4 method wants w1 and w3 to share `weight_scale_2`.
pub fn nvfp4(w: &[f32], rows: usize, cols: usize, weight_amax: Option<f32>, input_amax: f32) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    divides(cols, NVFP4_BLOCK, "NVFP4 blocks of 16")?;
    let s2 = scale_for(weight_amax.unwrap_or_else(|| amax(w)), E4M3_MAX * E2M1_MAX);
    let mut packed = Vec::with_capacity(w.len() / 2);
    let mut sf = Vec::with_capacity(w.len() / NVFP4_BLOCK);
    for block in w.chunks_exact(NVFP4_BLOCK) {
        let code = f32_to_e4m3_sat(amax(block) / (E2M1_MAX * s2));
        let scale = e4m3_to_f32(code) * s2;
        sf.push(code);
        if scale > 0.0 && scale.is_finite() {
            packed.extend(quantize_fp4_packed(block, scale));
        } else {
            // A zero block scale encodes the block as zeros (dividing by it would saturate).
            packed.extend(std::iter::repeat_n(0u8, NVFP4_BLOCK / 2));
        }
    }
    Ok(vec![
        ("weight", bytes(DType::U8, vec![rows, cols / 2], packed)?),
        (
            "weight_scale",
            bytes(DType::F8E4M3, vec![rows, cols / NVFP4_BLOCK], sf)?,
        ),
        ("weight_scale_2", scalar(s2)?),
        ("input_scale", scalar(scale_for(input_amax, E4M3_MAX * E2M1_MAX))?),
    ])
}

/// MXFP4: `weight` u8 `[rows, cols / 2]`, `weight_scale` u8 (UE8M0 bytes) `[rows, cols / 32]`.
pub fn mxfp4(w: &[f32], rows: usize, cols: usize) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    divides(cols, MXFP4_BLOCK, "MXFP4 blocks of 32")?;
    let mut packed = Vec::with_capacity(w.len() / 2);
    let mut scales = Vec::with_capacity(w.len() / MXFP4_BLOCK);
    for block in w.chunks_exact(MXFP4_BLOCK) {
        let e = e8m0_from_f32_ceil(amax(block) / E2M1_MAX);
        scales.push(e);
        packed.extend(quantize_fp4_packed(block, e8m0_to_f32(e)));
    }
    Ok(vec![
        ("weight", bytes(DType::U8, vec![rows, cols / 2], packed)?),
        (
            "weight_scale",
            bytes(DType::U8, vec![rows, cols / MXFP4_BLOCK], scales)?,
        ),
    ])
}

/// INT4, AWQ-style unsigned with a zero point per group of `group` inputs: `weight` u8
/// `[rows, cols / 2]` (low nibble = even input), `weight_scale` f32 and `weight_zero` u8
/// `[rows, cols / group]`.
pub fn int4_group(w: &[f32], rows: usize, cols: usize, group: usize) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    let group = Int4GroupMethod::new(group)?.group();
    divides(cols, group, "INT4 groups")?;
    let q = quantize_int4_grouped(w, rows, cols, group, true).map_err(codec_err)?;
    let zeros = q
        .zeros
        .ok_or_else(|| MoeError::lifecycle("the INT4 codec returned no zero points"))?;
    Ok(vec![
        // With an even column count the codec's flat packing is row-major [rows, cols / 2].
        ("weight", bytes(DType::U8, vec![rows, cols / 2], q.packed)?),
        ("weight_scale", Tensor::from_f32(vec![rows, cols / group], q.scales)?),
        ("weight_zero", bytes(DType::U8, vec![rows, cols / group], zeros)?),
    ])
}

/// INT8 per output channel: `weight` i8 `[rows, cols]`, `weight_scale` f32 `[rows]`.
pub fn int8_channel(w: &[f32], rows: usize, cols: usize) -> Result<Quantized> {
    check_matrix(w, rows, cols)?;
    let q = quantize_int8_per_channel(w, rows, cols).map_err(codec_err)?;
    let codes = q.codes.iter().map(|&c| c as u8).collect();
    Ok(vec![
        ("weight", bytes(DType::I8, vec![rows, cols], codes)?),
        ("weight_scale", Tensor::from_f32(vec![rows], q.scales)?),
    ])
}

/// The f32 weights of one expert (`w3` only for gated activations), unsharded.
#[derive(Clone, Copy, Debug)]
pub struct ExpertMatrices<'a> {
    /// Gate (`[intermediate, hidden]`), or the up projection of a non-gated expert.
    pub w1: &'a [f32],
    /// Up (`[intermediate, hidden]`).
    pub w3: Option<&'a [f32]>,
    /// Down (`[hidden, intermediate]`).
    pub w2: &'a [f32],
    pub hidden: usize,
    pub intermediate: usize,
}

/// Expert `expert` quantized as `q` prescribes, under its canonical names
/// (`{expert}.{w1|w3|w2}.{suffix}`). `input_amax` are the activation amaxima of FC1's input
/// and of FC2's input (used by the formats with static activation scales). w1 and w3 share
/// their per-tensor weight scale (FP8 per tensor, NVFP4), as ModelOpt exports fused gate/up.
/// `QuantAlgo::None` gives the f32 weights.
pub fn quantize_expert(
    q: &QuantConfig,
    expert: usize,
    m: &ExpertMatrices<'_>,
    input_amax: [f32; 2],
) -> Result<Vec<(String, Tensor)>> {
    let (h, i) = (m.hidden, m.intermediate);
    let fc1_amax = m.w3.map_or_else(|| amax(m.w1), |w3| amax(m.w1).max(amax(w3)));
    let mut projs = vec![(Proj::W1, m.w1, i, h, input_amax[0])];
    if let Some(w3) = m.w3 {
        projs.push((Proj::W3, w3, i, h, input_amax[0]));
    }
    projs.push((Proj::W2, m.w2, h, i, input_amax[1]));
    let mut out = Vec::new();
    for (proj, w, rows, cols, in_amax) in projs {
        let shared = (proj != Proj::W2).then_some(fc1_amax);
        let tensors = match q.algo {
            QuantAlgo::None => {
                check_matrix(w, rows, cols)?;
                vec![("weight", Tensor::from_f32(vec![rows, cols], w.to_vec())?)]
            }
            QuantAlgo::Fp8PerTensor => fp8_per_tensor(w, rows, cols, shared, in_amax)?,
            QuantAlgo::Fp8Block => fp8_block(
                w,
                rows,
                cols,
                q.weight_block_size.unwrap_or(Fp8BlockMethod::DEFAULT_BLOCK),
            )?,
            QuantAlgo::Nvfp4 => nvfp4(w, rows, cols, shared, in_amax)?,
            QuantAlgo::W4A16Mxfp4 => mxfp4(w, rows, cols)?,
            QuantAlgo::W4A16Int4 => int4_group(w, rows, cols, q.group_size.unwrap_or(Int4GroupMethod::DEFAULT_GROUP))?,
            QuantAlgo::W8A16 => int8_channel(w, rows, cols)?,
        };
        out.extend(
            tensors
                .into_iter()
                .map(|(suffix, t)| (expert_tensor_name(expert, proj, suffix), t)),
        );
    }
    Ok(out)
}

/// Bytes of the tensors [`quantize_expert`] stores for one `[rows, cols]` matrix quantized as
/// `q` prescribes (codes, scales and zero points; f32 for `QuantAlgo::None`): what a forward
/// reads of it. Read from the format's checkpoint tensors (`moe_core::quant_format`), each in
/// its first accepted dtype (what [`quantize_expert`] writes); per-tensor scalars count 4 bytes
/// each.
pub fn matrix_bytes(q: &QuantConfig, rows: usize, cols: usize) -> usize {
    let d = q.algo.descriptor();
    d.checkpoint
        .iter()
        .map(|t| {
            let elements: usize = d.checkpoint_shape(t, rows, cols, q).iter().product();
            let dtype = t.dtypes.first().copied().unwrap_or(DType::F32);
            // A packed-FP4 dtype counts bytes too (its unit is the packed byte); a packed
            // shape already halves the columns.
            elements * dtype.size_in_bytes()
        })
        .sum()
}

/// The activation quantization of FC1's and FC2's inputs under `q`, as its descriptor's
/// [`ActivationQuant`] defines it, with the static scales folded from the checkpoint tensors
/// in `src` as spec A.3 says (the largest `input_scale` of the projections over all
/// `num_experts`; FC1 reads w1 and, gated, w3): what an oracle applies to its inputs, computed
/// without the quant methods. FP8 groups take the block's columns.
pub fn reference_act_quants(
    q: &QuantConfig,
    src: &dyn WeightSource,
    num_experts: usize,
    gated: bool,
) -> Result<[ActQuant; 2]> {
    let max_scale = |projs: &[Proj]| -> Result<f32> {
        let mut m = 0.0f32;
        for e in 0..num_experts {
            for &p in projs {
                let name = expert_tensor_name(e, p, "input_scale");
                let t = src.get(&name)?.ok_or(MoeError::MissingTensor { name: name.clone() })?;
                m = t.to_f32_vec(&name)?.into_iter().fold(m, f32::max);
            }
        }
        Ok(m)
    };
    let fc1: &[Proj] = if gated { &[Proj::W1, Proj::W3] } else { &[Proj::W1] };
    let d = q.algo.descriptor();
    Ok(match d.activation {
        ActivationQuant::None => [ActQuant::None; 2],
        ActivationQuant::Fp8PerTensor => [
            ActQuant::Fp8PerTensor { scale: max_scale(fc1)? },
            ActQuant::Fp8PerTensor {
                scale: max_scale(&[Proj::W2])?,
            },
        ],
        ActivationQuant::Fp8Groups => {
            let group = d.extent(Extent::BlockCols, q);
            [ActQuant::Fp8Group { group }; 2]
        }
        ActivationQuant::Nvfp4 => [
            ActQuant::Nvfp4 {
                global_scale: 1.0 / max_scale(fc1)?,
            },
            ActQuant::Nvfp4 {
                global_scale: 1.0 / max_scale(&[Proj::W2])?,
            },
        ],
    })
}

/// The weight `[out, in]` of `{expert}.{proj}` dequantized from its canonical tensors in `src`
/// (see [`dequantize_matrix`]).
pub fn dequantize(
    q: &QuantConfig,
    src: &dyn WeightSource,
    expert: usize,
    proj: Proj,
    out: usize,
    inp: usize,
) -> Result<Vec<f32>> {
    dequantize_matrix(q, src, &format!("{expert}.{}", proj.as_str()), out, inp)
}

/// The weight `[out, in]` stored as `{prefix}.weight` plus the scale tensors of format `q`
/// under the canonical suffixes (`{prefix}.weight_scale_inv`, ...), dequantized to f32: the
/// inverse of the quantizers above up to their rounding. Any matrix works, not only experts
/// (e.g. a checkpoint's FP8 shared expert, `prefix = "...shared_experts.gate_proj"`).
///
/// Decoded with the codecs directly, independently of the kernels' decoders, which makes it
/// the reference of tests and accuracy reports. A missing tensor is `MissingTensor`, one of the
/// wrong size a shape error naming it.
pub fn dequantize_matrix(
    q: &QuantConfig,
    src: &dyn WeightSource,
    prefix: &str,
    out: usize,
    inp: usize,
) -> Result<Vec<f32>> {
    let n = out * inp;
    let name = |suffix: &str| format!("{prefix}.{suffix}");
    let fetch = |suffix: &str| {
        let nm = name(suffix);
        src.get(&nm)?.ok_or(MoeError::MissingTensor { name: nm })
    };
    let sized = |suffix: &str, want: usize, got: usize| {
        if want == got {
            Ok(())
        } else {
            Err(MoeError::shape(name(suffix), format!("{want} elements"), &[got]))
        }
    };
    let bytes = |suffix: &str, len: usize| -> Result<Vec<u8>> {
        let v = fetch(suffix)?;
        sized(suffix, len, v.data.len())?;
        Ok(v.data.to_vec())
    };
    let floats = |suffix: &str, len: usize| -> Result<Vec<f32>> {
        let v = fetch(suffix)?.to_f32_vec(&name(suffix))?;
        sized(suffix, len, v.len())?;
        Ok(v)
    };
    let fp4 = || -> Result<Vec<f32>> {
        let mut v = vec![0.0; n];
        decode_fp4_packed(&bytes("weight", n.div_ceil(2))?, &mut v).map_err(codec_err)?;
        Ok(v)
    };
    Ok(match q.algo {
        QuantAlgo::None => floats("weight", n)?,
        QuantAlgo::Fp8PerTensor => {
            let s = floats("weight_scale", 1)?[0];
            bytes("weight", n)?.iter().map(|&c| e4m3_to_f32(c) * s).collect()
        }
        QuantAlgo::Fp8Block => {
            let [b0, b1] = Fp8BlockMethod::new(q.weight_block_size.unwrap_or(Fp8BlockMethod::DEFAULT_BLOCK))?.block();
            let nc = inp.div_ceil(b1);
            let s = floats("weight_scale_inv", out.div_ceil(b0) * nc)?;
            bytes("weight", n)?
                .iter()
                .enumerate()
                .map(|(i, &c)| e4m3_to_f32(c) * s[(i / inp / b0) * nc + (i % inp) / b1])
                .collect()
        }
        QuantAlgo::Nvfp4 => {
            divides(inp, NVFP4_BLOCK, "NVFP4 blocks of 16")?;
            let (sf, s2) = (bytes("weight_scale", n / NVFP4_BLOCK)?, floats("weight_scale_2", 1)?[0]);
            fp4()?
                .iter()
                .enumerate()
                .map(|(i, &v)| v * (e4m3_to_f32(sf[i / NVFP4_BLOCK]) * s2))
                .collect()
        }
        QuantAlgo::W4A16Mxfp4 => {
            divides(inp, MXFP4_BLOCK, "MXFP4 blocks of 32")?;
            let sc = bytes("weight_scale", n / MXFP4_BLOCK)?;
            fp4()?
                .iter()
                .enumerate()
                .map(|(i, &v)| v * e8m0_to_f32(sc[i / MXFP4_BLOCK]))
                .collect()
        }
        QuantAlgo::W4A16Int4 => {
            let group = Int4GroupMethod::new(q.group_size.unwrap_or(Int4GroupMethod::DEFAULT_GROUP))?.group();
            divides(inp, group, "INT4 groups")?;
            let q = Int4Grouped {
                rows: out,
                cols: inp,
                group_size: group,
                packed: bytes("weight", n.div_ceil(2))?,
                scales: floats("weight_scale", n / group)?,
                zeros: Some(bytes("weight_zero", n / group)?),
            };
            q.dequantize().map_err(codec_err)?
        }
        QuantAlgo::W8A16 => {
            let codes: Vec<i8> = bytes("weight", n)?.iter().map(|&b| b as i8).collect();
            dequantize_int8_per_channel(&codes, &floats("weight_scale", out)?, out, inp).map_err(codec_err)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(q: &'a Quantized, suffix: &str) -> &'a Tensor {
        &q.iter().find(|(s, _)| *s == suffix).unwrap().1
    }

    #[test]
    fn matrix_bytes_are_the_stored_tensors_of_every_format() {
        let (h, i) = (256, 128);
        let w: Vec<f32> = (0..h * i).map(|k| ((k * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for algo in QuantAlgo::ALL {
            let q = QuantConfig {
                algo,
                weight_block_size: None,
                group_size: None,
            };
            let m = ExpertMatrices {
                w1: &w,
                w3: Some(&w),
                w2: &w,
                hidden: h,
                intermediate: i,
            };
            let tensors = quantize_expert(&q, 0, &m, [4.0, 4.0]).unwrap();
            for (proj, rows, cols) in [(Proj::W1, i, h), (Proj::W2, h, i)] {
                let prefix = expert_tensor_name(0, proj, "");
                let stored: usize = tensors
                    .iter()
                    .filter(|(n, _)| n.starts_with(&prefix))
                    .map(|(_, t)| t.numel() * t.dtype().size_in_bytes())
                    .sum();
                assert_eq!(matrix_bytes(&q, rows, cols), stored, "{algo:?} {proj:?}");
            }
        }
    }

    #[test]
    fn fp8_per_tensor_by_hand() {
        // amax 448 -> scale 1; 1.3 -> 1.25; input amax 896 -> 2.
        let q = fp8_per_tensor(&[448.0, 1.3, -0.0, 0.5], 2, 2, None, 896.0).unwrap();
        let codes = get(&q, "weight").as_bytes("w").unwrap();
        let decoded: Vec<f32> = codes.iter().map(|&c| e4m3_to_f32(c)).collect();
        assert_eq!(decoded, vec![448.0, 1.25, -0.0, 0.5]);
        assert_eq!(get(&q, "weight_scale").as_f32("s").unwrap(), &[1.0]);
        assert_eq!(get(&q, "input_scale").as_f32("s").unwrap(), &[2.0]);
        assert_eq!(get(&q, "weight_scale").shape(), &[] as &[usize]);
        // All zeros: scale 1, never 0.
        let z = fp8_per_tensor(&[0.0; 4], 2, 2, None, 0.0).unwrap();
        assert_eq!(get(&z, "weight_scale").as_f32("s").unwrap(), &[1.0]);
        assert_eq!(get(&z, "input_scale").as_f32("s").unwrap(), &[1.0]);
    }

    #[test]
    fn fp8_block_scales_cover_partial_blocks() {
        // 3 x 3 with 2 x 2 blocks: 4 blocks, edge blocks partial.
        let w = [448.0, 0.0, 896.0, 0.0, 0.0, 0.0, 0.0, 44.8, 4.48];
        let q = fp8_block(&w, 3, 3, [2, 2]).unwrap();
        let s = get(&q, "weight_scale_inv");
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.as_f32("s").unwrap(), &[1.0, 2.0, 0.1, 0.01]);
        assert!(fp8_block(&w, 3, 3, [0, 2]).is_err());
    }

    #[test]
    fn nvfp4_follows_modelopt() {
        // amax 6 * 448 -> s2 = 1; block 0 amax 6 -> sf = 1; block 1 all zero -> sf 0, codes 0.
        let mut w = vec![0.0f32; 32];
        w[0] = 6.0;
        w[1] = -2.9; // -> -3
        w[2] = 2688.0 / 448.0 / 2.0; // 3
        w[16] = 0.0;
        let q = nvfp4(&w, 1, 32, Some(2688.0), 2688.0).unwrap();
        assert_eq!(get(&q, "weight").shape(), &[1, 16]);
        assert_eq!(get(&q, "weight_scale").as_bytes("sf").unwrap(), &[0x38, 0x00]); // e4m3 1.0, 0
        assert_eq!(&get(&q, "weight").as_bytes("w").unwrap()[..2], &[0x7 | (0xD << 4), 0x5]);
        assert_eq!(get(&q, "weight_scale_2").as_f32("s").unwrap(), &[1.0]);
        assert_eq!(get(&q, "input_scale").as_f32("s").unwrap(), &[1.0]);
        assert!(nvfp4(&w[..24], 1, 24, None, 1.0).is_err());
    }

    #[test]
    fn expert_names_and_shared_fc1_scale() {
        let (h, i) = (32, 16);
        let w1 = vec![0.5f32; i * h];
        let w3 = vec![2.0f32; i * h];
        let w2 = vec![1.0f32; h * i];
        let m = ExpertMatrices {
            w1: &w1,
            w3: Some(&w3),
            w2: &w2,
            hidden: h,
            intermediate: i,
        };
        let q = QuantConfig {
            algo: QuantAlgo::Nvfp4,
            ..QuantConfig::default()
        };
        let t = quantize_expert(&q, 3, &m, [1.0, 2.0]).unwrap();
        let find = |n: &str| &t.iter().find(|(name, _)| name == n).unwrap().1;
        assert_eq!(find("3.w1.weight").shape(), &[i, h / 2]);
        assert_eq!(find("3.w2.weight_scale").shape(), &[h, i / 16]);
        // w1 and w3 share s2 = max amax / 2688.
        assert_eq!(
            find("3.w1.weight_scale_2").as_f32("s").unwrap(),
            find("3.w3.weight_scale_2").as_f32("s").unwrap()
        );
        assert_eq!(find("3.w1.weight_scale_2").as_f32("s").unwrap(), &[2.0 / 2688.0]);
        assert_eq!(t.len(), 12);
        let bad = ExpertMatrices { w2: &w2[1..], ..m };
        assert!(quantize_expert(&q, 0, &bad, [1.0, 1.0]).is_err());
    }

    #[test]
    fn every_format_dequantizes_close_to_its_source() {
        use moe_core::MemoryWeights;
        let (h, i) = (256, 128);
        let w: Vec<f32> = (0..i * h)
            .map(|k| ((k * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect();
        let m = ExpertMatrices {
            w1: &w,
            w3: None,
            w2: &w,
            hidden: h,
            intermediate: i,
        };
        // Relative L2 of the weights after a round trip (uniform data): 8-bit formats a few
        // percent at most, 4-bit ones up to a fifth.
        for (algo, bound) in [
            (QuantAlgo::None, 0.0),
            (QuantAlgo::Fp8PerTensor, 0.05),
            (QuantAlgo::Fp8Block, 0.05),
            (QuantAlgo::Nvfp4, 0.15),
            (QuantAlgo::W4A16Mxfp4, 0.15),
            (QuantAlgo::W4A16Int4, 0.1),
            (QuantAlgo::W8A16, 0.01),
        ] {
            let q = QuantConfig {
                algo,
                ..QuantConfig::default()
            };
            let mut src = MemoryWeights::new();
            for (name, t) in quantize_expert(&q, 0, &m, [1.0, 1.0]).unwrap() {
                src.insert(name, t);
            }
            let back = dequantize(&q, &src, 0, Proj::W1, i, h).unwrap();
            let (num, den) = back.iter().zip(&w).fold((0.0f64, 0.0f64), |(n, d), (&b, &a)| {
                (n + f64::from(b - a).powi(2), d + f64::from(a).powi(2))
            });
            let err = (num / den).sqrt();
            assert!(err <= bound, "{algo:?}: rel L2 {err:e}");
            // A tensor of the wrong size is named, a missing one too.
            let name = "0.w2.weight";
            src.insert(name, Tensor::zeros(src.tensor(name).unwrap().dtype(), vec![3]));
            let err = dequantize(&q, &src, 0, Proj::W2, h, i).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            src.remove(name);
            assert!(matches!(
                dequantize(&q, &src, 0, Proj::W2, h, i),
                Err(MoeError::MissingTensor { .. })
            ));
        }
    }
}
