//! Tensor operations the scheduler and backends need, dispatched on the tensor's storage.
//! Host tensors run the CPU kernels; device tensors run device kernels, or fail with a typed
//! error in builds without them.

use moe_core::{DType, HostStorage, MoeError, Result, RoutingMethod, Storage, Tensor};

use crate::cpu::act_quant::{ActQuant, Fp8Rows, dequantize_fp8_rows, qdq_rows, quantize_fp8_rows};
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
/// Device logits are routed on their device (`cuda::route_device`) without waiting for it: the
/// refusals of the NaN policy are reported by the device's next `CudaDevice::synchronize`.
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
        Storage::Device(_) => {
            // The device kernel records NaN refusals in a status word instead of waiting for
            // the host: the error surfaces at the device's next `CudaDevice::synchronize`, as
            // CUDA reports asynchronous errors, so a device forward never stalls on it. Refused
            // rows route to valid ids meanwhile.
            let routed = crate::cuda::route_device(method, logits)?;
            let (ids, weights) = routed.into_deferred()?;
            Ok(Routed { ids, weights })
        }
    }
}

/// Rows `start..start + len` of the leading dimension.
pub fn narrow_rows(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    match t.storage() {
        Storage::Host(_) => t.narrow_rows(start, len),
        Storage::Device(_) => crate::cuda::narrow_rows_device(t, start, len),
    }
}

/// Concatenation along the leading dimension.
pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
    match parts.first().map(Tensor::storage) {
        Some(Storage::Device(_)) => crate::cuda::concat_rows_device(parts),
        _ => Tensor::concat_rows(parts),
    }
}

/// Appends `extra` zero rows.
pub fn pad_rows(t: &Tensor, extra: usize) -> Result<Tensor> {
    match t.storage() {
        Storage::Host(_) => t.pad_rows(extra),
        Storage::Device(_) => crate::cuda::pad_rows_device(t, extra),
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
        Storage::Device(_) => crate::cuda::scale_rows_device(x, weights),
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
        Storage::Device(_) => crate::cuda::qdq_device(q, x),
    }
}

/// The activation payload of `q` for host activations `x [N, H]` as it travels between
/// ranks: E4M3 codes (`[N, H]`, one byte an element) with, for dynamic groups, their f32 scales
/// (`[N, ceil(H / group)]`). `None` where activations travel as values: no or NVFP4
/// quantization, or device tensors (whose kernels quantize on the device).
/// [`decode_activations`] turns a payload back into values.
pub fn quantize_activations(q: &ActQuant, x: &Tensor) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if x.shape().len() != 2 {
        return Err(MoeError::shape("x", "[N, H]", x.shape()));
    }
    // Only FP8 travels as codes: for every other quantization `x` is not read here at all (in
    // particular not widened to f32, which would copy the activations of every forward).
    if !x.is_host() || !matches!(q, ActQuant::Fp8PerTensor { .. } | ActQuant::Fp8Group { .. }) {
        return Ok(None);
    }
    let (n, h) = (x.shape()[0], x.shape()[1]);
    let values = match x.dtype() {
        DType::F32 => std::borrow::Cow::Borrowed(x.as_f32("x")?),
        _ => std::borrow::Cow::Owned(x.to_f32_vec("x")?),
    };
    let Some(Fp8Rows { codes, scales }) = quantize_fp8_rows(q, &values, h)? else {
        return Ok(None);
    };
    let codes = Tensor::from_host(DType::F8E4M3, vec![n, h], HostStorage::Bytes(codes))?;
    let scales = match (q, scales) {
        (ActQuant::Fp8Group { group }, Some(s)) => Some(Tensor::from_f32(vec![n, h.div_ceil(*group)], s)?),
        _ => None,
    };
    Ok(Some((codes, scales)))
}

/// The values of activations `x` as [`quantize_activations`] sent them: an E4M3 payload (with
/// `x_sf` for dynamic groups) decoded to f32 (`code * scale`, the values `qdq_activations`
/// gives before rounding to a 16-bit dtype); `None` when `x` is not a payload (and `x_sf` is
/// absent). Errors name the tensor that does not fit `q`.
pub fn decode_activations(q: &ActQuant, x: &Tensor, x_sf: Option<&Tensor>) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F8E4M3 {
        return match x_sf {
            None => Ok(None),
            Some(sf) => Err(MoeError::DTypeMismatch {
                what: "x_sf".into(),
                expected: "activation scales only beside E4M3 activation codes".into(),
                actual: format!("{} {:?} beside {} x", sf.dtype(), sf.shape(), x.dtype()),
            }),
        };
    }
    if x.shape().len() != 2 {
        return Err(MoeError::shape("x", "[N, H]", x.shape()));
    }
    let (n, h) = (x.shape()[0], x.shape()[1]);
    let scales = match (q, x_sf) {
        (ActQuant::Fp8Group { group }, Some(sf)) => {
            sf.expect_shape("x_sf", &[n, h.div_ceil(*group)])?;
            Some(sf.as_f32("x_sf")?)
        }
        (ActQuant::Fp8PerTensor { .. }, None) => None,
        (q, sf) => {
            return Err(MoeError::DTypeMismatch {
                what: "x".into(),
                expected: format!("activations of the layer's quantization ({q:?})"),
                actual: format!(
                    "E4M3 codes {}",
                    if sf.is_some() {
                        "with group scales"
                    } else {
                        "without scales"
                    }
                ),
            });
        }
    };
    let values = if n == 0 {
        Vec::new()
    } else {
        dequantize_fp8_rows(q, x.as_bytes("x")?, scales, h)?
    };
    Ok(Some(Tensor::from_f32(vec![n, h], values)?))
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

/// `[idx.len(), ...]`: row `i` is row `idx[i]` of `t` (any dtype). The communication
/// strategies build their send buffers with it; device tensors gather on their device.
pub fn gather_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let host = match t.storage() {
        Storage::Host(h) => h,
        Storage::Device(_) => return crate::cuda::gather_rows(t, idx),
    };
    let rows = t.rows();
    if let Some(&bad) = idx.iter().find(|&&i| i >= rows) {
        return Err(MoeError::shape("gather_rows index", format!("rows < {rows}"), &[bad]));
    }
    fn pick<T: Clone>(v: &[T], w: usize, idx: &[usize]) -> Vec<T> {
        idx.iter()
            .flat_map(|&i| v[i * w..(i + 1) * w].iter().cloned())
            .collect()
    }
    let w = t.row_len();
    let storage = match host {
        moe_core::HostStorage::F32(v) => moe_core::HostStorage::F32(pick(v, w, idx)),
        moe_core::HostStorage::F16(v) => moe_core::HostStorage::F16(pick(v, w, idx)),
        moe_core::HostStorage::BF16(v) => moe_core::HostStorage::BF16(pick(v, w, idx)),
        moe_core::HostStorage::I32(v) => moe_core::HostStorage::I32(pick(v, w, idx)),
        moe_core::HostStorage::Bytes(v) => {
            moe_core::HostStorage::Bytes(pick(v, w * t.dtype().size_in_bytes().max(1), idx))
        }
    };
    let mut shape = t.shape().to_vec();
    if let Some(first) = shape.first_mut() {
        *first = idx.len();
    }
    Tensor::from_host(t.dtype(), shape, storage)
}

/// `[offsets.len() - 1, H]` of `dtype`: row `g` is the sum of the rows
/// `rows[offsets[g]..offsets[g + 1]]` of the float tensor `t [R, H]`, accumulated in f32 from
/// zero in the listed order (so host and device agree bit for bit). The all-to-all combine
/// sums each token's partial outputs with it.
pub fn segment_sum_rows(t: &Tensor, offsets: &[usize], rows: &[usize], dtype: DType) -> Result<Tensor> {
    if !t.is_host() {
        return crate::cuda::segment_sum_rows(t, offsets, rows, dtype);
    }
    if offsets.last().copied().unwrap_or(0) != rows.len() || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(MoeError::shape(
            "segment_sum_rows offsets",
            format!("non-decreasing, ending at {}", rows.len()),
            offsets,
        ));
    }
    let h = t.row_len();
    let parts = t.to_f32_vec("segment_sum_rows input")?;
    let groups = offsets.len().saturating_sub(1);
    let mut acc = vec![0.0f32; groups * h];
    for g in 0..groups {
        for &r in &rows[offsets[g]..offsets[g + 1]] {
            let src = parts
                .get(r * h..(r + 1) * h)
                .ok_or_else(|| MoeError::shape("segment_sum_rows row", format!("rows < {}", t.rows()), &[r]))?;
            for (a, b) in acc[g * h..(g + 1) * h].iter_mut().zip(src) {
                *a += b;
            }
        }
    }
    Tensor::from_f32_as(dtype, vec![groups, h], &acc)
}
