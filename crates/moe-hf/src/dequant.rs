//! Decoding quantized weights back to f32, for the model-side weights that stay dense
//! (DeepSeek's FP8 shared experts) and for [`crate::BlockOptions::dequantize`] (running a
//! quantized checkpoint with float experts, as transformers' `dequantize=True` does).
//!
//! The decoding itself is `moe_quant::quantize::dequantize_matrix` (the codecs, exact); this
//! module first checks every tensor of the projection against its format (dtype and shape,
//! naming the real tensor), which the decoder, working on element counts, does not.

use moe_core::{DType, MoeError, Result, Tensor, TensorView, WeightSource};

use crate::checkpoint::Checkpoint;
use crate::quant_format::CheckpointQuant;
use crate::router::load_float;

/// Serves the tensors `{base}{suffix}` of one projection under the decoder's names
/// `p.{suffix}`, after checking them against the format.
struct Checked<'a> {
    tensors: Vec<(String, TensorView<'a>)>,
}

impl WeightSource for Checked<'_> {
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        Ok(self.tensors.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _)| n.clone()).collect()
    }

    fn describe(&self) -> String {
        "checked projection".into()
    }
}

/// Dequantizes one projection `[out, inp]` stored canonically in `format`. `get(suffix)`
/// returns its canonical tensor (`weight`, `weight_scale_inv`, ...); `what` names the weight
/// in errors. Every tensor is checked against [`CheckpointQuant::canonical_tensors`] first.
pub fn dequantize<'a>(
    format: CheckpointQuant,
    what: &str,
    out: usize,
    inp: usize,
    get: impl Fn(&str) -> Result<TensorView<'a>>,
) -> Result<Vec<f32>> {
    let expected = format
        .canonical_tensors(out, inp)
        .map_err(|detail| MoeError::shape(what, detail, &[out, inp]))?;
    let mut tensors = Vec::with_capacity(expected.len());
    for t in &expected {
        let mut v = get(t.suffix)?;
        let name = format!("{what} ({})", t.suffix);
        if !t.dtypes.contains(&v.dtype) {
            return Err(MoeError::DTypeMismatch {
                what: name,
                expected: t.dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" or "),
                actual: v.dtype.to_string(),
            });
        }
        if !t.shape.matches(&v.shape) {
            return Err(MoeError::shape(name, t.shape.describe(), &v.shape));
        }
        if v.dtype == DType::E8M0 {
            // UE8M0 scales saved as torch's float8_e8m0fnu: the decoder reads them as bytes.
            v.dtype = DType::U8;
        }
        tensors.push((format!("p.{}", t.suffix), v));
    }
    moe_quant::quantize::dequantize_matrix(&format.quant_config(), &Checked { tensors }, "p", out, inp)
}

/// Loads the dense (model-side) linear weight `name` (`…weight`, `[out, inp]`) as a `dtype`
/// tensor: float weights as they are; weights quantized in the checkpoint's `format` (their
/// scales beside them, `…weight_scale_inv` etc.) decoded to f32 and rounded once to `dtype`,
/// as transformers' dequantize-on-load does.
///
/// Used for DeepSeek's FP8 shared experts: they are small next to the routed experts, run on
/// every token outside the routed layer, and a float copy keeps the model-side math simple.
pub fn load_dense(
    ckpt: &Checkpoint,
    format: CheckpointQuant,
    name: &str,
    shape: [usize; 2],
    dtype: DType,
) -> Result<Tensor> {
    let Some((stored, _)) = ckpt.info(name) else {
        // Missing or unreadable: let the float path produce its typed error naming `name`.
        return load_float(ckpt, name, &shape, dtype);
    };
    if stored.is_float_activation() {
        return load_float(ckpt, name, &shape, dtype);
    }
    let base = name.strip_suffix("weight").unwrap_or(name);
    let format = match format {
        // AWQ stores `qweight`, never a quantized `weight`; INT8-looking bytes are not ours to guess.
        CheckpointQuant::None | CheckpointQuant::Int4Awq { .. } => {
            let declared = match format {
                CheckpointQuant::None => "config.json declares no quantization_config".to_string(),
                f => format!(
                    "config.json declares {} weights, which have no `weight` tensor",
                    f.name()
                ),
            };
            return Err(MoeError::DTypeMismatch {
                what: format!("{name} ({declared})"),
                expected: "f32 or bf16 or f16".into(),
                actual: stored.to_string(),
            });
        }
        f => f,
    };
    let [out, inp] = shape;
    let w = dequantize(format, name, out, inp, |suffix| ckpt.tensor(&format!("{base}{suffix}")))?;
    Tensor::from_f32_as(dtype, shape.to_vec(), &w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn view(dtype: DType, shape: &[usize], data: Vec<u8>) -> TensorView<'static> {
        TensorView {
            dtype,
            shape: shape.to_vec(),
            data: Cow::Owned(data),
        }
    }

    #[test]
    fn mxfp4_low_nibble_is_even_input() {
        // One row of 32 inputs: byte 0 = codes (2 -> 1.0 at c=0, 7 -> 6.0 at c=1); scale 2^1
        // stored as float8_e8m0fnu.
        let mut w = vec![0u8; 16];
        w[0] = 0x72;
        let get = |s: &str| -> Result<TensorView<'static>> {
            Ok(match s {
                "weight" => view(DType::U8, &[1, 16], w.clone()),
                _ => view(DType::E8M0, &[1, 1], vec![128]),
            })
        };
        let d = dequantize(CheckpointQuant::Mxfp4, "w", 1, 32, get).unwrap();
        assert_eq!((d[0], d[1], d[2]), (2.0, 12.0, 0.0));
    }

    #[test]
    fn fp8_block_scales_multiply_their_block() {
        // [2, 130]: two 128-column blocks, the second partial.
        let get = |s: &str| -> Result<TensorView<'static>> {
            Ok(match s {
                "weight" => view(DType::F8E4M3, &[2, 130], vec![0x38; 260]), // 1.0
                _ => view(
                    DType::F32,
                    &[1, 2],
                    [2f32, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            })
        };
        let d = dequantize(CheckpointQuant::Fp8Block { block: [128, 128] }, "w", 2, 130, get).unwrap();
        assert_eq!((d[0], d[127], d[128], d[259]), (2.0, 2.0, 3.0, 3.0));
    }

    #[test]
    fn wrong_scale_shape_is_named() {
        let get = |s: &str| -> Result<TensorView<'static>> {
            Ok(match s {
                "weight" => view(DType::F8E4M3, &[4, 4], vec![0x38; 16]),
                _ => view(DType::F32, &[2, 2], vec![0; 16]),
            })
        };
        let e = dequantize(CheckpointQuant::Fp8Block { block: [128, 128] }, "x.weight", 4, 4, get).unwrap_err();
        assert!(e.to_string().contains("x.weight (weight_scale_inv)"), "{e}");
    }
}
