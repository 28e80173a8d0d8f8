//! Validation of `run_moe` inputs, shared by the host backends: every malformed input is a
//! typed error naming the offending tensor, checked before any compute.

use moe_core::{DType, MoeError, MoeRunContext, Result, Tensor};
use moe_kernels::cpu::float_slice::FloatSlice;

use crate::lifecycle::ExpertLayer;

/// The inputs of one `run_moe` call, validated against the layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunInputs<'a> {
    pub num_tokens: usize,
    pub top_k: usize,
    /// Activations `[N, H]` in the layer dtype.
    pub x: FloatSlice<'a>,
    /// Global slot ids `[N, k]`.
    pub slots: &'a [i32],
    /// Routing weights `[N, k]`; `None` = 1.
    pub scales: Option<&'a [f32]>,
    pub output_dtype: DType,
}

impl<'a> RunInputs<'a> {
    /// `decoded` holds the activations' values when `ctx.x` is an FP8 payload (E4M3 codes,
    /// with `x_sf` for dynamic groups): the parsed `x` then borrows it, as f32.
    pub fn parse(ctx: &MoeRunContext<'a>, layer: &ExpertLayer, decoded: &'a mut Option<Tensor>) -> Result<Self> {
        let (h, k, dtype) = (layer.layout.hidden_size, layer.config.top_k(), layer.config.dtype);
        let x = ctx.x;
        if x.shape().len() != 2 || x.shape()[1] != h {
            return Err(MoeError::shape("x", format!("[N, {h}]"), x.shape()));
        }
        *decoded = layer.decode_payload(x, ctx.x_sf)?;
        let decoded: &'a Option<Tensor> = decoded;
        let x: &'a Tensor = match decoded {
            Some(values) => values,
            None => {
                x.expect_dtype("x", dtype)?;
                x
            }
        };
        let n = x.rows();
        let slots = ctx.token_selected_slots;
        slots.expect_shape("token_selected_slots", &[n, k])?;
        let slots = slots.as_i32("token_selected_slots")?;
        let scales = ctx
            .token_final_scales
            .map(|s: &'a Tensor| {
                s.expect_shape("token_final_scales", &[n, k])?;
                s.as_f32("token_final_scales")
            })
            .transpose()?;
        if !ctx.output_dtype.is_float_activation() {
            return Err(MoeError::DTypeMismatch {
                what: "output_dtype".into(),
                expected: "f32, f16 or bf16".into(),
                actual: ctx.output_dtype.to_string(),
            });
        }
        Ok(RunInputs {
            num_tokens: n,
            top_k: k,
            x: FloatSlice::from_tensor(x, "x")?,
            slots,
            scales,
            output_dtype: ctx.output_dtype,
        })
    }
}

/// The `[n, h]` output tensor in `dtype` from f32 values (rounded to nearest even).
pub(crate) fn output_tensor(dtype: DType, n: usize, h: usize, values: Vec<f32>) -> Result<Tensor> {
    if dtype == DType::F32 {
        Tensor::from_f32(vec![n, h], values)
    } else {
        Tensor::from_f32_as(dtype, vec![n, h], &values)
    }
}
