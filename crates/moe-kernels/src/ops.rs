//! Tensor operations the scheduler and backends need, dispatched on the tensor's storage.
//! Host tensors run the CPU kernels; device tensors run device kernels, or fail with a typed
//! error in builds without them.

use moe_core::{DType, MoeError, Result, RoutingMethod, Storage, Tensor};

use crate::cpu::act_quant::{ActQuant, qdq_rows};
use crate::cpu::float_slice::FloatSlice;

/// Routing ids `[N, k]` (i32) and weights `[N, k]` (f32, `None` for a scale-less static table).
#[derive(Clone, Debug)]
pub struct Routed {
    pub ids: Tensor,
    pub weights: Option<Tensor>,
}

fn device_unsupported(op: &str) -> MoeError {
    // Device kernels come with the `cuda` feature; until then a device tensor here is a
    // programming error of the caller, reported rather than panicking.
    MoeError::lifecycle(format!("`{op}` has no kernel for device tensors in this build"))
}

/// Applies `method` to router logits `[N, E]` of any float dtype; the math runs in f32.
pub fn route(method: &RoutingMethod, logits: &Tensor) -> Result<Routed> {
    if logits.shape().len() != 2 {
        return Err(MoeError::shape("router_logits", "[N, E]", logits.shape()));
    }
    let (n, e) = (logits.shape()[0], logits.shape()[1]);
    match logits.storage() {
        Storage::Host(_) => {
            let l = match logits.dtype() {
                DType::F32 => std::borrow::Cow::Borrowed(logits.as_f32("router_logits")?),
                _ => std::borrow::Cow::Owned(logits.to_f32_vec("router_logits")?),
            };
            let out = method.apply_host(&l, n, e)?;
            let k = out.top_k;
            Ok(Routed {
                ids: Tensor::from_i32(vec![n, k], out.ids)?,
                weights: out.weights.map(|w| Tensor::from_f32(vec![n, k], w)).transpose()?,
            })
        }
        Storage::Device(_) => Err(device_unsupported("route")),
    }
}

/// Rows `start..start + len` of the leading dimension.
pub fn narrow_rows(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    match t.storage() {
        Storage::Host(_) => t.narrow_rows(start, len),
        Storage::Device(_) => Err(device_unsupported("narrow_rows")),
    }
}

/// Concatenation along the leading dimension.
pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
    match parts.first().map(Tensor::storage) {
        Some(Storage::Device(_)) => Err(device_unsupported("concat_rows")),
        _ => Tensor::concat_rows(parts),
    }
}

/// Appends `extra` zero rows.
pub fn pad_rows(t: &Tensor, extra: usize) -> Result<Tensor> {
    match t.storage() {
        Storage::Host(_) => t.pad_rows(extra),
        Storage::Device(_) => Err(device_unsupported("pad_rows")),
    }
}

/// Element-wise multiplication of each row of `x` by one weight per row (weight-on-input).
pub fn scale_rows(x: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let n = x.rows();
    weights.expect_shape("router weights (weight on input)", &[n, 1])?;
    match x.storage() {
        Storage::Host(_) => {
            let w = weights.as_f32("router weights")?;
            let mut v = x.to_f32_vec("x")?;
            let h = x.row_len();
            for (row, &s) in v.chunks_mut(h.max(1)).zip(w) {
                row.iter_mut().for_each(|e| *e *= s);
            }
            Tensor::from_f32_as(x.dtype(), x.shape().to_vec(), &v)
        }
        Storage::Device(_) => Err(device_unsupported("scale_rows")),
    }
}

/// Activations `x [N, H]` quantize-dequantized as `q` prescribes (see
/// [`crate::cpu::act_quant`]), returned in `x`'s dtype: what a quant method's `quantize_input`
/// hands to dispatch when the host kernels carry quantized activations as their decoded values.
/// `ActQuant::None` returns a copy.
pub fn qdq_activations(q: &ActQuant, x: &Tensor) -> Result<Tensor> {
    if x.shape().len() != 2 {
        return Err(MoeError::shape("x", "[N, H]", x.shape()));
    }
    if q.is_none() {
        return Ok(x.clone());
    }
    match x.storage() {
        Storage::Host(_) => {
            let mut v = x.to_f32_vec("x")?;
            qdq_rows(q, &mut v, x.shape()[1])?;
            Tensor::from_f32_as(x.dtype(), x.shape().to_vec(), &v)
        }
        Storage::Device(_) => Err(device_unsupported("qdq_activations")),
    }
}

/// Dense `x @ weight^T (+ bias)` for the model-side linears around the layer (router gate,
/// shared experts): `x [T, in]`, `weight [out, in]`, `bias [out]`; result `[T, out]` f32,
/// accumulated in f32.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if x.shape().len() != 2 || weight.shape().len() != 2 || x.shape()[1] != weight.shape()[1] {
        return Err(MoeError::shape(
            "linear weight",
            format!("[out, {}]", x.shape().get(1).copied().unwrap_or(0)),
            weight.shape(),
        ));
    }
    let (t, k, n) = (x.shape()[0], x.shape()[1], weight.shape()[0]);
    if let Some(b) = bias {
        b.expect_shape("linear bias", &[n])?;
    }
    match (x.storage(), weight.storage()) {
        (Storage::Host(_), Storage::Host(_)) => {
            let xv = match x.dtype() {
                DType::F32 => std::borrow::Cow::Borrowed(x.as_f32("linear input")?),
                _ => std::borrow::Cow::Owned(x.to_f32_vec("linear input")?),
            };
            let w = FloatSlice::from_tensor(weight, "linear weight")?;
            let b = bias.map(|b| FloatSlice::from_tensor(b, "linear bias")).transpose()?;
            let out = crate::cpu::linear::linear(&xv, w, b, t, k, n)?;
            Tensor::from_f32(vec![t, n], out)
        }
        _ => Err(device_unsupported("linear")),
    }
}
