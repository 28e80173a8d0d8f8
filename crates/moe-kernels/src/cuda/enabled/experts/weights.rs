//! A layer's weights on the device, uploaded once in the layout the kernels read: slot-major
//! matrices in their stored format (float weights in the activation dtype; FP8 and MXFP4
//! codes packed, with their scales) and biases in f32.

use moe_core::{DType, MoeError, Result};

use super::super::device::CudaDevice;
use super::super::storage::CudaStorage;
use super::{Format, WeightArgs};
use crate::cpu::expert_mlp::ExpertView;
use crate::cpu::float_slice::FloatSlice;
use crate::cpu::weight_slice::{QuantMatrix, WeightSlice};

/// One weight matrix (FC1 or FC2) of every local slot.
pub(super) struct DeviceMatrix {
    codes: CudaStorage,
    /// FP8 block: f32 scales; MXFP4: UE8M0 bytes; FP8 per tensor: one f32 per slot.
    scales: Option<CudaStorage>,
    rows: usize,
    cols: usize,
}

pub(super) fn format_of(w: &WeightSlice<'_>) -> Format {
    match w {
        WeightSlice::Float(_) => Format::Float,
        WeightSlice::Quant(q) => match q.matrix {
            QuantMatrix::Fp8PerTensor { .. } => Format::Fp8PerTensor,
            QuantMatrix::Fp8Block { block, .. } => Format::Fp8Block {
                b0: block[0],
                b1: block[1],
            },
            QuantMatrix::Mxfp4 { .. } => Format::Mxfp4,
            // Other formats never reach here: the CUDA backend's capabilities exclude them.
            _ => Format::Float,
        },
    }
}

/// Widens/narrows a float slice into the activation dtype's little-endian bytes.
fn float_bytes(s: FloatSlice<'_>, dtype: DType, out: &mut Vec<u8>) {
    let n = s.len();
    match dtype {
        DType::F32 => (0..n).for_each(|i| out.extend_from_slice(&s.at(i).to_le_bytes())),
        DType::BF16 => match s {
            FloatSlice::BF16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
            _ => (0..n).for_each(|i| out.extend_from_slice(&half::bf16::from_f32(s.at(i)).to_bits().to_le_bytes())),
        },
        _ => match s {
            FloatSlice::F16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
            _ => (0..n).for_each(|i| out.extend_from_slice(&half::f16::from_f32(s.at(i)).to_bits().to_le_bytes())),
        },
    }
}

fn f32_bytes(v: &[f32], out: &mut Vec<u8>) {
    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

impl DeviceMatrix {
    /// Uploads matrix `which` of every slot, one slot at a time (the host never holds more
    /// than one slot's converted copy).
    pub(super) fn upload(
        dev: &CudaDevice,
        what: &str,
        slots: &[WeightSlice<'_>],
        rows: usize,
        cols: usize,
        dtype: DType,
        format: Format,
    ) -> Result<DeviceMatrix> {
        let code_bytes_per_slot = match format {
            Format::Float => rows * cols * dtype.size_in_bytes(),
            Format::Fp8PerTensor | Format::Fp8Block { .. } => rows * cols,
            Format::Mxfp4 => rows * cols / 2,
        };
        let scale_bytes_per_slot = match format {
            Format::Float => 0,
            Format::Fp8PerTensor => 4,
            Format::Fp8Block { b0, b1 } => rows.div_ceil(b0) * cols.div_ceil(b1) * 4,
            Format::Mxfp4 => rows * cols / 32,
        };
        let mut codes = dev.alloc_storage(code_bytes_per_slot * slots.len())?;
        let mut scales = if scale_bytes_per_slot > 0 {
            Some(dev.alloc_storage(scale_bytes_per_slot * slots.len())?)
        } else {
            None
        };
        let mut buf = Vec::new();
        let mut sbuf = Vec::new();
        for (i, w) in slots.iter().enumerate() {
            buf.clear();
            sbuf.clear();
            if format_of(w) != format {
                return Err(MoeError::DTypeMismatch {
                    what: format!("{what} of local slot {i}"),
                    expected: format.suffix().into(),
                    actual: format_of(w).suffix().into(),
                });
            }
            match *w {
                WeightSlice::Float(s) => float_bytes(s, dtype, &mut buf),
                WeightSlice::Quant(q) => match q.matrix {
                    QuantMatrix::Fp8PerTensor { codes, scale } => {
                        buf.extend_from_slice(codes);
                        f32_bytes(&[scale], &mut sbuf);
                    }
                    QuantMatrix::Fp8Block { codes, scales, .. } => {
                        buf.extend_from_slice(codes);
                        f32_bytes(scales, &mut sbuf);
                    }
                    QuantMatrix::Mxfp4 { packed, scales } => {
                        buf.extend_from_slice(packed);
                        sbuf.extend_from_slice(scales);
                    }
                    _ => return Err(MoeError::lifecycle(format!("{what}: format not uploadable to CUDA"))),
                },
            }
            if buf.len() != code_bytes_per_slot || sbuf.len() != scale_bytes_per_slot {
                return Err(MoeError::shape(
                    format!("{what} of local slot {i}"),
                    format!("{code_bytes_per_slot} code bytes and {scale_bytes_per_slot} scale bytes"),
                    &[buf.len(), sbuf.len()],
                ));
            }
            codes.write_at(i * code_bytes_per_slot, &buf)?;
            if let Some(s) = scales.as_mut() {
                s.write_at(i * scale_bytes_per_slot, &sbuf)?;
            }
        }
        Ok(DeviceMatrix {
            codes,
            scales,
            rows,
            cols,
        })
    }

    pub(super) fn bytes(&self) -> usize {
        self.codes.len_bytes() + self.scales.as_ref().map_or(0, CudaStorage::len_bytes)
    }

    pub(super) fn args(&self, dev: &CudaDevice, format: Format) -> WeightArgs {
        let scales = self.scales.as_ref().map_or(0, |s| s.ptr(dev));
        let (b0, b1) = match format {
            Format::Fp8Block { b0, b1 } => (b0 as i32, b1 as i32),
            _ => (1, 1),
        };
        WeightArgs {
            w: self.codes.ptr(dev),
            scales: if matches!(format, Format::Fp8Block { .. }) {
                scales
            } else {
                0
            },
            mx_scales: if format == Format::Mxfp4 { scales } else { 0 },
            tensor_scale: 1.0,
            per_slot: if format == Format::Fp8PerTensor { scales } else { 0 },
            rows: self.rows as i32,
            cols: self.cols as i32,
            b0,
            b1,
            b0_log2: b0.trailing_zeros() as i32,
            b1_log2: b1.trailing_zeros() as i32,
        }
    }
}

pub(super) fn upload_bias(
    dev: &CudaDevice,
    what: &str,
    biases: &[Option<FloatSlice<'_>>],
    len: usize,
) -> Result<Option<CudaStorage>> {
    if biases.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut host = Vec::with_capacity(biases.len() * len);
    for (i, b) in biases.iter().enumerate() {
        let b = b.ok_or_else(|| MoeError::MissingTensor {
            name: format!("{what} of local slot {i}"),
        })?;
        if b.len() != len {
            return Err(MoeError::shape(
                format!("{what} of local slot {i}"),
                format!("[{len}]"),
                &[b.len()],
            ));
        }
        host.extend((0..len).map(|j| b.at(j)));
    }
    let mut bytes = Vec::with_capacity(host.len() * 4);
    f32_bytes(&host, &mut bytes);
    let mut s = dev.alloc_storage(bytes.len())?;
    s.write_at(0, &bytes)?;
    Ok(Some(s))
}

/// FC2 shares FC1's format (one quant method per layer).
pub(super) fn format_of_first(slots: &[ExpertView<'_>], fallback: Format) -> Format {
    slots.first().map_or(fallback, |s| format_of(&s.w2))
}
