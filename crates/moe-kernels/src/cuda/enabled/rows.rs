//! Row operations on device tensors: narrow, concatenate, pad, scale rows, cast.
//!
//! Each returns a new device tensor on the input's device, queued on that device's stream (no
//! host synchronisation) and equal to the host operation of `moe_core::Tensor` / `crate::ops`
//! bit for bit: narrow, concatenate and pad are device-to-device byte copies (and a memset for
//! the padding); scale and cast are the element-wise kernels of `kernels/rows.cu`, computing in
//! f32 and rounding to nearest even as the `half` crate does.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result, Tensor};

use super::device::{CudaDevice, dev_err};
use super::ffi;
use super::routing::float_dtype_code;
use super::storage::{CudaStorage, tensor_bytes};

const SRC: &str = include_str!("../kernels/rows.cu");
const MODULE: &str = "rows";
const THREADS: u32 = 256;

/// Bytes of one leading-dimension row; a tensor without a leading dimension has no rows.
fn row_bytes(t: &Tensor, what: &str) -> Result<usize> {
    if t.shape().is_empty() {
        return Err(MoeError::shape(what, "a tensor with a leading dimension", t.shape()));
    }
    Ok(t.row_len() * t.dtype().size_in_bytes())
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`, on the device's stream.
fn copy_bytes(
    dev: &CudaDevice,
    src: &CudaStorage,
    src_off: usize,
    dst: &mut CudaStorage,
    dst_off: usize,
    len: usize,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let src_all = src.view::<u8>(src_off + len)?;
    let src_v = src_all.slice(src_off..src_off + len);
    let mut dst_all = dst.view_mut::<u8>(dst_off + len)?;
    let mut dst_v = dst_all.slice_mut(dst_off..dst_off + len);
    dev.stream()
        .memcpy_dtod(&src_v, &mut dst_v)
        .map_err(|e| dev_err(&dev.location(), "device-to-device copy", e))
}

/// Rows `start..start + len` of the leading dimension of a device tensor.
pub fn narrow_rows_device(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let s = CudaStorage::of(t, "narrow_rows")?;
    let rb = row_bytes(t, "narrow_rows")?;
    let rows = t.rows();
    let end = start.checked_add(len).filter(|&end| end <= rows).ok_or_else(|| {
        MoeError::shape(
            "narrow_rows",
            format!("rows {start}..{} within {rows}", start.saturating_add(len)),
            t.shape(),
        )
    })?;
    let dev = s.device();
    let mut out = dev.alloc_storage(len * rb)?;
    copy_bytes(dev, s, start * rb, &mut out, 0, (end - start) * rb)?;
    let mut shape = t.shape().to_vec();
    shape[0] = len;
    Ok(dev.tensor(t.dtype(), shape, out))
}

/// Concatenation of device tensors of one device, dtype and row shape along the leading
/// dimension.
pub fn concat_rows_device(parts: &[Tensor]) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| MoeError::shape("concat_rows", "at least one part", &[]))?;
    let dev = CudaStorage::of(first, "concat_rows part 0")?.device().clone();
    let rb = row_bytes(first, "concat_rows part 0")?;
    let mut storages = Vec::with_capacity(parts.len());
    let mut rows = 0usize;
    for (i, p) in parts.iter().enumerate() {
        let what = format!("concat_rows part {i}");
        let s = CudaStorage::of(p, &what)?;
        if s.device().ordinal() != dev.ordinal() {
            return Err(MoeError::DTypeMismatch {
                what,
                expected: format!("a tensor on {}", dev.location()),
                actual: s.device().location(),
            });
        }
        p.expect_dtype(&what, first.dtype())?;
        if p.shape().get(1..) != first.shape().get(1..) {
            return Err(MoeError::shape(what, format!("{:?}", first.shape()), p.shape()));
        }
        rows += p.rows();
        storages.push((s, p.rows() * rb));
    }
    let mut out = dev.alloc_storage(rows * rb)?;
    let mut offset = 0;
    for (s, bytes) in storages {
        copy_bytes(&dev, s, 0, &mut out, offset, bytes)?;
        offset += bytes;
    }
    let mut shape = first.shape().to_vec();
    shape[0] = rows;
    Ok(dev.tensor(first.dtype(), shape, out))
}

/// Appends `extra` zero rows to a device tensor (`extra == 0` returns the tensor itself, as
/// the host version does).
pub fn pad_rows_device(t: &Tensor, extra: usize) -> Result<Tensor> {
    let s = CudaStorage::of(t, "pad_rows")?;
    let rb = row_bytes(t, "pad_rows")?;
    if extra == 0 {
        return Ok(t.clone());
    }
    let dev = s.device();
    let (have, pad) = (t.rows() * rb, extra * rb);
    let mut out = dev.alloc_storage(have + pad)?;
    copy_bytes(dev, s, 0, &mut out, 0, have)?;
    if pad > 0 {
        let mut all = out.view_mut::<u8>(have + pad)?;
        let mut tail = all.slice_mut(have..have + pad);
        dev.stream()
            .memset_zeros(&mut tail)
            .map_err(|e| dev_err(&dev.location(), "zeroing the padding rows", e))?;
    }
    let mut shape = t.shape().to_vec();
    shape[0] += extra;
    Ok(dev.tensor(t.dtype(), shape, out))
}

/// Grid of a grid-stride element-wise kernel over `n` elements.
fn grid(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let blocks = n
        .div_ceil(THREADS as usize)
        .min(dev.multiprocessors() as usize * 16)
        .max(1);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Each row of `x` (`[N, ...]`, f32/bf16/f16) times its weight (`[N, 1]` f32), in f32 and
/// rounded to `x`'s dtype: the weight-on-input scaling of `crate::ops::scale_rows`.
pub fn scale_rows_device(x: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let xs = CudaStorage::of(x, "x")?;
    let ws = CudaStorage::of(weights, "router weights")?;
    let code = float_dtype_code(x.dtype(), "x")?;
    row_bytes(x, "x")?;
    let (rows, row_len) = (x.rows(), x.row_len());
    weights.expect_shape("router weights (weight on input)", &[rows, 1])?;
    weights.expect_dtype("router weights", DType::F32)?;
    let dev = xs.device();
    if ws.device().ordinal() != dev.ordinal() {
        return Err(MoeError::DTypeMismatch {
            what: "router weights".into(),
            expected: format!("a tensor on {}", dev.location()),
            actual: ws.device().location(),
        });
    }
    let n = x.numel();
    let bytes = tensor_bytes(x.dtype(), x.shape());
    let mut out = dev.alloc_storage(bytes)?;
    if n > 0 {
        let func = dev.function(MODULE, SRC, "scale_rows")?;
        let x_v = xs.view::<u8>(bytes)?;
        let w_v = ws.view::<f32>(rows)?;
        let mut out_v = out.view_mut::<u8>(bytes)?;
        let (rows_u, row_len_u) = (rows as u64, row_len as u64);
        // The `&mut` view is moved into the closure (not reborrowed) so that it lives as long
        // as the launch's argument list.
        let out_r = &mut out_v;
        ffi::launch(dev.stream(), &func, grid(dev, n), &dev.location(), |args| {
            args.arg(&x_v)
                .arg(&code)
                .arg(&w_v)
                .arg(&rows_u)
                .arg(&row_len_u)
                .arg(out_r);
        })?;
    }
    Ok(dev.tensor(x.dtype(), x.shape().to_vec(), out))
}

/// `t` converted to another float dtype (f32, bf16, f16; round to nearest even, NaN kept);
/// the same dtype returns `t` itself.
pub fn cast_device(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let s = CudaStorage::of(t, "cast source")?;
    let src_code = float_dtype_code(t.dtype(), "cast source")?;
    let dst_code = float_dtype_code(dtype, "cast target")?;
    if dtype == t.dtype() {
        return Ok(t.clone());
    }
    let dev = s.device();
    let n = t.numel();
    let mut out = dev.alloc_storage(tensor_bytes(dtype, t.shape()))?;
    if n > 0 {
        let func = dev.function(MODULE, SRC, "cast_float")?;
        let x_v = s.view::<u8>(tensor_bytes(t.dtype(), t.shape()))?;
        let mut out_v = out.view_mut::<u8>(tensor_bytes(dtype, t.shape()))?;
        let n_u = n as u64;
        let out_r = &mut out_v;
        ffi::launch(dev.stream(), &func, grid(dev, n), &dev.location(), |args| {
            args.arg(&x_v).arg(&src_code).arg(out_r).arg(&dst_code).arg(&n_u);
        })?;
    }
    Ok(dev.tensor(dtype, t.shape().to_vec(), out))
}

#[cfg(test)]
mod tests {
    use moe_core::{DType, HostStorage, MoeError, Result, Tensor};

    use super::{cast_device, concat_rows_device, narrow_rows_device, pad_rows_device, scale_rows_device};
    use crate::cuda::{CudaDevice, download};
    use crate::ops;

    /// dtype, shape and element bit patterns of a tensor, brought to the host.
    fn bits(t: &Tensor) -> Result<(DType, Vec<usize>, Vec<u32>)> {
        let h = download(t)?;
        let v = match h.host("bits")? {
            HostStorage::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            HostStorage::F16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
            HostStorage::BF16(v) => v.iter().map(|x| u32::from(x.to_bits())).collect(),
            HostStorage::I32(v) => v.iter().map(|&x| x as u32).collect(),
            HostStorage::Bytes(v) => v.iter().map(|&b| u32::from(b)).collect(),
        };
        Ok((h.dtype(), h.shape().to_vec(), v))
    }

    /// Float values as f32, every NaN replaced by one pattern (device arithmetic returns a
    /// canonical NaN where the host propagates the operand's payload).
    fn float_bits(t: &Tensor) -> Result<(DType, Vec<usize>, Vec<u32>)> {
        let h = download(t)?;
        let v = h.to_f32_vec("float_bits")?;
        let v = v
            .iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect();
        Ok((h.dtype(), h.shape().to_vec(), v))
    }

    /// A `[shape]` host tensor of `dtype` with varied contents (seeded by `seed`).
    fn sample(dtype: DType, shape: &[usize], seed: u32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let ints: Vec<u32> = (0..n as u32)
            .map(|i| (i ^ seed).wrapping_mul(0x9e37_79b1).rotate_left(7))
            .collect();
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => {
                let v: Vec<f32> = ints.iter().map(|&i| (i % 20_001) as f32 / 100.0 - 100.0).collect();
                Tensor::from_f32_as(dtype, shape.to_vec(), &v)
            }
            DType::I32 => Tensor::from_i32(shape.to_vec(), ints.iter().map(|&i| i as i32).collect()),
            _ => Tensor::from_host(
                dtype,
                shape.to_vec(),
                HostStorage::Bytes(ints.iter().map(|&i| i as u8).collect()),
            ),
        }
    }

    #[test]
    fn narrow_concat_pad_match_the_host() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let dtypes = [
            DType::F32,
            DType::BF16,
            DType::F16,
            DType::I32,
            DType::U8,
            DType::F8E4M3,
        ];
        for dtype in dtypes {
            for shape in [vec![9, 5], vec![9, 2, 3]] {
                let h = sample(dtype, &shape, 1)?;
                let d = dev.upload(&h)?;
                for (start, len) in [(0, 9), (2, 3), (8, 1), (9, 0), (0, 0)] {
                    let want = bits(&h.narrow_rows(start, len)?)?;
                    assert_eq!(
                        bits(&narrow_rows_device(&d, start, len)?)?,
                        want,
                        "{dtype} narrow {start}+{len}"
                    );
                    assert_eq!(
                        bits(&ops::narrow_rows(&d, start, len)?)?,
                        want,
                        "{dtype} ops::narrow_rows"
                    );
                }
                let parts_h = [h.narrow_rows(0, 2)?, h.narrow_rows(2, 0)?, sample(dtype, &shape, 2)?];
                let parts_d = parts_h.iter().map(|p| dev.upload(p)).collect::<Result<Vec<_>>>()?;
                let want = bits(&Tensor::concat_rows(&parts_h)?)?;
                assert_eq!(bits(&concat_rows_device(&parts_d)?)?, want, "{dtype} concat");
                assert_eq!(bits(&ops::concat_rows(&parts_d)?)?, want, "{dtype} ops::concat_rows");
                for extra in [0, 1, 4] {
                    let want = bits(&h.pad_rows(extra)?)?;
                    assert_eq!(bits(&pad_rows_device(&d, extra)?)?, want, "{dtype} pad {extra}");
                    assert_eq!(bits(&ops::pad_rows(&d, extra)?)?, want, "{dtype} ops::pad_rows");
                }
                let empty = dev.upload(&h.narrow_rows(0, 0)?)?;
                assert_eq!(
                    bits(&pad_rows_device(&empty, 3)?)?,
                    bits(&h.narrow_rows(0, 0)?.pad_rows(3)?)?
                );
            }
        }
        Ok(())
    }

    #[test]
    fn row_ops_refuse_bad_inputs_with_typed_errors() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let a = dev.upload(&Tensor::from_f32(vec![3, 4], vec![1.0; 12])?)?;
        let shape_what = |r: Result<Tensor>| match r {
            Err(MoeError::ShapeMismatch { what, .. }) => what,
            other => format!("not a shape error: {other:?}"),
        };
        let dtype_what = |r: Result<Tensor>| match r {
            Err(MoeError::DTypeMismatch { what, .. }) => what,
            other => format!("not a dtype error: {other:?}"),
        };
        assert_eq!(shape_what(narrow_rows_device(&a, 2, 2)), "narrow_rows");
        assert_eq!(shape_what(narrow_rows_device(&a, usize::MAX, 2)), "narrow_rows");
        let wide = dev.upload(&Tensor::from_f32(vec![2, 5], vec![1.0; 10])?)?;
        assert_eq!(shape_what(concat_rows_device(&[a.clone(), wide])), "concat_rows part 1");
        let bf = dev.upload(&Tensor::from_f32_as(DType::BF16, vec![2, 4], &[1.0; 8])?)?;
        assert_eq!(
            dtype_what(concat_rows_device(&[a.clone(), bf.clone()])),
            "concat_rows part 1"
        );
        let host = Tensor::from_f32(vec![1, 4], vec![1.0; 4])?;
        assert_eq!(
            dtype_what(concat_rows_device(&[a.clone(), host.clone()])),
            "concat_rows part 1"
        );
        assert_eq!(shape_what(concat_rows_device(&[])), "concat_rows");
        assert_eq!(dtype_what(narrow_rows_device(&host, 0, 1)), "narrow_rows");

        let w = dev.upload(&Tensor::from_f32(vec![3, 1], vec![2.0; 3])?)?;
        let w_short = dev.upload(&Tensor::from_f32(vec![2, 1], vec![2.0; 2])?)?;
        assert_eq!(
            shape_what(scale_rows_device(&a, &w_short)),
            "router weights (weight on input)"
        );
        let w_bf = dev.upload(&Tensor::from_f32_as(DType::BF16, vec![3, 1], &[2.0; 3])?)?;
        assert_eq!(dtype_what(scale_rows_device(&a, &w_bf)), "router weights");
        let ints = dev.upload(&Tensor::from_i32(vec![3, 4], vec![1; 12])?)?;
        assert_eq!(dtype_what(scale_rows_device(&ints, &w)), "x");
        let w_host = Tensor::from_f32(vec![3, 1], vec![2.0; 3])?;
        assert_eq!(dtype_what(scale_rows_device(&a, &w_host)), "router weights");

        assert_eq!(dtype_what(cast_device(&a, DType::I32)), "cast target");
        assert_eq!(dtype_what(cast_device(&ints, DType::F32)), "cast source");
        Ok(())
    }

    /// f32 values that exercise rounding: signed zeros, infinities, NaNs with payloads,
    /// subnormals of every format, the format limits, exact halfway cases, random bits.
    fn special_f32() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f81_2345), // signalling NaN with a payload
            f32::from_bits(0xffc0_1234),
            1e-40,
            -1e-45,
            f32::MAX,
            f32::MIN_POSITIVE,
            65504.0,
            65520.0, // halfway to the f16 overflow: rounds to inf
            65519.99,
            1.003_906_3,    // 1 + 2^-8: bf16 halfway, rounds to even (1.0)
            1.011_718_8,    // 1 + 3 * 2^-8: bf16 halfway, rounds up to even
            5.960_464_5e-8, // 2^-24, the smallest f16 subnormal
            2.980_232_2e-8, // 2^-25: f16 halfway to 0, rounds to 0
            8.940_697e-8,   // 3 * 2^-25: f16 halfway, rounds to even (2^-23)
            1.000_488_3,    // 1 + 2^-11: f16 halfway, rounds to even
            3.389_531_4e38, // near the bf16 overflow
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..2000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            v.push(f32::from_bits(s));
        }
        v
    }

    #[test]
    fn cast_matches_the_host_bit_for_bit() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let values = special_f32();
        let floats = [DType::F32, DType::BF16, DType::F16];
        for src in floats {
            let h = Tensor::from_f32_as(src, vec![values.len()], &values)?;
            let d = dev.upload(&h)?;
            for dst in floats {
                let got = cast_device(&d, dst)?;
                assert!(!got.is_host());
                assert_eq!(bits(&got)?, bits(&h.to_dtype(dst)?)?, "{src} -> {dst}");
            }
        }
        Ok(())
    }

    #[test]
    fn scale_rows_matches_the_host_bit_for_bit() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let values = special_f32();
        let h_len = 33;
        let n = values.len() / h_len;
        let x = &values[..n * h_len];
        let w: Vec<f32> = (0..n)
            .map(|i| [1.5, -2.0, 0.0, 1e-3, 3.0, f32::INFINITY, 0.7, 1e30][i % 8])
            .collect();
        let w_host = Tensor::from_f32(vec![n, 1], w)?;
        let w_dev = dev.upload(&w_host)?;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x_host = Tensor::from_f32_as(dtype, vec![n, h_len], x)?;
            let x_dev = dev.upload(&x_host)?;
            let want = float_bits(&ops::scale_rows(&x_host, &w_host)?)?;
            assert_eq!(float_bits(&scale_rows_device(&x_dev, &w_dev)?)?, want, "{dtype}");
            assert_eq!(
                float_bits(&ops::scale_rows(&x_dev, &w_dev)?)?,
                want,
                "{dtype} ops::scale_rows"
            );
        }
        // No rows: an empty result.
        let none = dev.upload(&Tensor::from_f32(vec![0, 4], vec![])?)?;
        let w0 = dev.upload(&Tensor::from_f32(vec![0, 1], vec![])?)?;
        assert_eq!(scale_rows_device(&none, &w0)?.shape(), [0, 4]);
        Ok(())
    }
}
