//! Device row gathers and scatter-adds that the communication strategies pack and unpack exchanges with.
//!
//! - [`gather_rows`]: rows of a tensor picked by a host index list (the all-to-all send buffer).
//! - [`pack_rows`] / [`unpack_rows`]: several tensors' rows side by side as one byte row, and
//!   back (the packed all-gather).
//! - [`segment_sum_rows`]: groups of rows summed in f32 in a listed order (the all-to-all
//!   combine).
//! - [`sum_blocks`]: equal blocks of a tensor summed element-wise in f32 in block order (the
//!   NCCL group's reduce-scatter and all-reduce).
//!
//! Every sum accumulates in f32 in the order the host code of the same operation uses, so a
//! device run reproduces the host one bit for bit. Kernels: `cuda/kernels/comm_rows.cu`.

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result, Storage, Tensor};

use super::device::CudaDevice;
use super::ffi;
use super::storage::{CudaStorage, tensor_bytes};

const MODULE: &str = "comm_rows";
const SRC: &str = include_str!("../kernels/comm_rows.cu");
/// Threads per block of the row kernels.
const THREADS: u32 = 256;
/// Most blocks a grid-stride row kernel is launched with.
const MAX_BLOCKS: usize = 1 << 20;

/// Kernel dtype code of a float dtype (`DT_*` in the kernel source).
fn float_code(dtype: DType, what: &str) -> Result<i32> {
    match dtype {
        DType::F32 => Ok(0),
        DType::BF16 => Ok(1),
        DType::F16 => Ok(2),
        other => Err(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "f32, bf16 or f16".into(),
            actual: other.to_string(),
        }),
    }
}

fn row_bytes(t: &Tensor) -> usize {
    t.row_len() * t.dtype().size_in_bytes()
}

fn with_rows(t: &Tensor, rows: usize) -> Vec<usize> {
    let mut shape = t.shape().to_vec();
    if shape.is_empty() {
        shape.push(rows);
    } else {
        shape[0] = rows;
    }
    shape
}

fn i32_index(values: impl Iterator<Item = usize>, what: &str) -> Result<Vec<i32>> {
    values
        .map(|v| i32::try_from(v).map_err(|_| MoeError::config(what, format!("index {v} exceeds i32"))))
        .collect()
}

/// Uploads a host i32 index list to `dev`.
fn upload_index(dev: &CudaDevice, values: Vec<i32>) -> Result<Tensor> {
    let n = values.len();
    dev.upload(&Tensor::from_i32(vec![n], values)?)
}

/// A device tensor of `t`'s device: `t` itself, or `t` uploaded to `dev` when it is a host tensor.
fn on_device(dev: &CudaDevice, t: &Tensor) -> Result<Tensor> {
    match t.storage() {
        Storage::Host(_) => dev.upload(t),
        Storage::Device(_) => {
            let s = CudaStorage::of(t, "row operand")?;
            if s.device().ordinal() != dev.ordinal() {
                return Err(MoeError::Backend(
                    format!(
                        "row operands on {} and {}: move them to one device first",
                        s.device().location(),
                        dev.location()
                    )
                    .into(),
                ));
            }
            Ok(t.clone())
        }
    }
}

/// One strided row copy (see `copy_rows_impl` in the kernel source); all sizes in bytes.
struct RowCopy {
    dst_stride: usize,
    dst_off: usize,
    src_stride: usize,
    src_off: usize,
    rows: usize,
    width: usize,
}

impl RowCopy {
    /// The widest word (16, 4 or 1 bytes) dividing every size and both base addresses.
    fn word(&self, dst_addr: u64, src_addr: u64) -> usize {
        let sizes = [self.dst_stride, self.dst_off, self.src_stride, self.src_off, self.width];
        [16usize, 4]
            .into_iter()
            .find(|&w| sizes.iter().all(|s| s % w == 0) && dst_addr % w as u64 == 0 && src_addr % w as u64 == 0)
            .unwrap_or(1)
    }
}

/// Runs one row copy from `src` into `dst` on `dev`'s stream; `idx` (device i32, one entry per
/// row) picks the source row of each destination row.
fn copy_rows(
    dev: &CudaDevice,
    dst: &mut CudaStorage,
    src: &CudaStorage,
    idx: Option<&CudaStorage>,
    c: &RowCopy,
) -> Result<()> {
    if c.rows == 0 || c.width == 0 {
        return Ok(());
    }
    let loc = dev.location();
    let stream = dev.stream().clone();
    let (dst_addr, src_addr) = {
        let (d, _rd) = dst.bytes().device_ptr(&stream);
        let (s, _rs) = src.bytes().device_ptr(&stream);
        (d, s)
    };
    let word = c.word(dst_addr, src_addr);
    let name = match word {
        16 => "copy_rows_w16",
        4 => "copy_rows_w4",
        _ => "copy_rows_w1",
    };
    let func = dev.function(MODULE, SRC, name)?;
    let w = |v: usize| (v / word) as i64;
    let (dst_stride, dst_off, src_stride, src_off) = (w(c.dst_stride), w(c.dst_off), w(c.src_stride), w(c.src_off));
    let (rows, width) = (c.rows as i64, w(c.width));
    let threads = (width.clamp(32, THREADS as i64) as u32).div_ceil(32) * 32;
    let cfg = LaunchConfig {
        grid_dim: (c.rows.min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let dst_len = dst.len_bytes();
    let mut dst_v = dst.view_mut::<u8>(dst_len)?;
    let src_v = src.view::<u8>(src.len_bytes())?;
    let idx_v = idx.map(|i| i.view::<i32>(c.rows)).transpose()?;
    let null: u64 = 0;
    ffi::launch(&stream, &func, cfg, &loc, |a| {
        a.arg(&mut dst_v)
            .arg(&dst_stride)
            .arg(&dst_off)
            .arg(&src_v)
            .arg(&src_stride)
            .arg(&src_off);
        match &idx_v {
            Some(v) => a.arg(v),
            None => a.arg(&null),
        };
        a.arg(&rows).arg(&width);
    })
}

/// `[idx.len(), ...]`: row `i` is row `idx[i]` of the device tensor `t` (any dtype), copied on
/// `t`'s device.
pub fn gather_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let s = CudaStorage::of(t, "gather_rows input")?;
    let dev = s.device().clone();
    let rows = t.rows();
    if let Some(&bad) = idx.iter().find(|&&i| i >= rows) {
        return Err(MoeError::shape("gather_rows index", format!("rows < {rows}"), &[bad]));
    }
    let rb = row_bytes(t);
    let shape = with_rows(t, idx.len());
    let mut out = dev.alloc_storage(tensor_bytes(t.dtype(), &shape))?;
    if !idx.is_empty() && rb > 0 {
        let index = upload_index(&dev, i32_index(idx.iter().copied(), "gather_rows index")?)?;
        let index_s = CudaStorage::of(&index, "gather_rows index")?;
        let copy = RowCopy {
            dst_stride: rb,
            dst_off: 0,
            src_stride: rb,
            src_off: 0,
            rows: idx.len(),
            width: rb,
        };
        copy_rows(&dev, &mut out, s, Some(index_s), &copy)?;
    }
    Ok(dev.tensor(t.dtype(), shape, out))
}

/// `[rows, sum of row bytes]` u8: each row holds every part's row bytes side by side, in part
/// order. Parts share their row count; host parts are uploaded to the device of the first
/// device part.
pub fn pack_rows(parts: &[&Tensor]) -> Result<Tensor> {
    let first = parts
        .iter()
        .find(|t| !t.is_host())
        .ok_or_else(|| MoeError::shape("pack_rows", "at least one device tensor", &[]))?;
    let dev = CudaStorage::of(first, "pack_rows part")?.device().clone();
    let rows = parts[0].rows();
    if let Some(p) = parts.iter().find(|p| p.rows() != rows) {
        return Err(MoeError::shape("pack_rows part", format!("{rows} rows"), p.shape()));
    }
    let widths: Vec<usize> = parts.iter().map(|t| row_bytes(t)).collect();
    let total: usize = widths.iter().sum();
    let mut out = dev.alloc_storage(rows * total)?;
    let mut offset = 0;
    for (p, &w) in parts.iter().zip(&widths) {
        let p = on_device(&dev, p)?;
        let copy = RowCopy {
            dst_stride: total,
            dst_off: offset,
            src_stride: w,
            src_off: 0,
            rows,
            width: w,
        };
        copy_rows(&dev, &mut out, CudaStorage::of(&p, "pack_rows part")?, None, &copy)?;
        offset += w;
    }
    Ok(dev.tensor(DType::U8, vec![rows, total], out))
}

/// The inverse of [`pack_rows`]: one device tensor per field `(dtype, row shape)`, in order.
pub fn unpack_rows(packed: &Tensor, fields: &[(DType, Vec<usize>)]) -> Result<Vec<Tensor>> {
    let s = CudaStorage::of(packed, "unpack_rows input")?;
    let dev = s.device().clone();
    let rows = packed.rows();
    let widths: Vec<usize> = fields
        .iter()
        .map(|(d, shape)| shape.iter().product::<usize>() * d.size_in_bytes())
        .collect();
    let total: usize = widths.iter().sum();
    if row_bytes(packed) != total {
        return Err(MoeError::shape(
            "unpack_rows input",
            format!("rows of {total} bytes"),
            packed.shape(),
        ));
    }
    let mut offset = 0;
    fields
        .iter()
        .zip(&widths)
        .map(|((dtype, row_shape), &w)| {
            let mut out = dev.alloc_storage(rows * w)?;
            let copy = RowCopy {
                dst_stride: w,
                dst_off: 0,
                src_stride: total,
                src_off: offset,
                rows,
                width: w,
            };
            copy_rows(&dev, &mut out, s, None, &copy)?;
            offset += w;
            let mut shape = vec![rows];
            shape.extend(row_shape);
            Ok(dev.tensor(*dtype, shape, out))
        })
        .collect()
}

/// `[offsets.len() - 1, H]` of `dtype`: row `g` is the sum, in f32 from zero in the listed
/// order, of the rows `rows[offsets[g]..offsets[g + 1]]` of the float device tensor `t [R, H]`.
pub fn segment_sum_rows(t: &Tensor, offsets: &[usize], rows: &[usize], dtype: DType) -> Result<Tensor> {
    let s = CudaStorage::of(t, "segment_sum_rows input")?;
    let dev = s.device().clone();
    let in_code = float_code(t.dtype(), "segment_sum_rows input")?;
    let out_code = float_code(dtype, "segment_sum_rows output")?;
    let groups = offsets.len().saturating_sub(1);
    let h = t.row_len();
    if offsets.last().copied().unwrap_or(0) != rows.len() || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(MoeError::shape(
            "segment_sum_rows offsets",
            format!("non-decreasing, ending at {}", rows.len()),
            offsets,
        ));
    }
    if let Some(&bad) = rows.iter().find(|&&r| r >= t.rows()) {
        return Err(MoeError::shape(
            "segment_sum_rows row",
            format!("rows < {}", t.rows()),
            &[bad],
        ));
    }
    let shape = vec![groups, h];
    let mut out = dev.alloc_storage(tensor_bytes(dtype, &shape))?;
    if groups == 0 || h == 0 {
        return Ok(dev.tensor(dtype, shape, out));
    }
    let off_t = upload_index(&dev, i32_index(offsets.iter().copied(), "segment offsets")?)?;
    let rows_t = upload_index(&dev, i32_index(rows.iter().copied(), "segment rows")?)?;
    let (off_s, rows_s) = (
        CudaStorage::of(&off_t, "segment offsets")?,
        CudaStorage::of(&rows_t, "segment rows")?,
    );
    let func = dev.function(MODULE, SRC, "segment_sum_rows")?;
    let loc = dev.location();
    let stream = dev.stream().clone();
    let threads = ((h as u32).clamp(32, THREADS)).div_ceil(32) * 32;
    let cfg = LaunchConfig {
        grid_dim: (groups.min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let out_len = out.len_bytes();
    let mut dst_v = out.view_mut::<u8>(out_len)?;
    let src_v = s.view::<u8>(s.len_bytes())?;
    let off_v = off_s.view::<i32>(offsets.len())?;
    let rows_v = rows_s.view::<i32>(rows.len())?;
    let (groups_i, h_i) = (groups as i64, h as i64);
    ffi::launch(&stream, &func, cfg, &loc, |a| {
        a.arg(&mut dst_v)
            .arg(&out_code)
            .arg(&src_v)
            .arg(&in_code)
            .arg(&off_v)
            .arg(&rows_v)
            .arg(&groups_i)
            .arg(&h_i);
    })?;
    Ok(dev.tensor(dtype, shape, out))
}

/// `shape` (of `t`'s dtype): the element-wise sum of the `blocks` equal consecutive blocks of
/// the float device tensor `t`, in f32 in block order (the host's `sum_tensors` order).
pub fn sum_blocks(t: &Tensor, blocks: usize, shape: Vec<usize>) -> Result<Tensor> {
    let s = CudaStorage::of(t, "sum_blocks input")?;
    let dev = s.device().clone();
    let code = float_code(t.dtype(), "sum_blocks input")?;
    let len: usize = shape.iter().product();
    if blocks == 0 || t.numel() != blocks * len {
        return Err(MoeError::shape(
            "sum_blocks input",
            format!("{blocks} blocks of {len} elements"),
            t.shape(),
        ));
    }
    let mut out = dev.alloc_storage(tensor_bytes(t.dtype(), &shape))?;
    if len == 0 {
        return Ok(dev.tensor(t.dtype(), shape, out));
    }
    let func = dev.function(MODULE, SRC, "sum_blocks")?;
    let loc = dev.location();
    let stream = dev.stream().clone();
    let cfg = LaunchConfig {
        grid_dim: (len.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let out_len = out.len_bytes();
    let mut dst_v = out.view_mut::<u8>(out_len)?;
    let src_v = s.view::<u8>(s.len_bytes())?;
    let (blocks_i, len_i) = (blocks as i64, len as i64);
    ffi::launch(&stream, &func, cfg, &loc, |a| {
        a.arg(&mut dst_v).arg(&src_v).arg(&code).arg(&blocks_i).arg(&len_i);
    })?;
    Ok(dev.tensor(t.dtype(), shape, out))
}
