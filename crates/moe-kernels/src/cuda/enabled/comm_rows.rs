//! Device row gathers and scatter-adds that the communication strategies pack and unpack exchanges with.
//!
//! - [`gather_rows`]: rows of a tensor picked by a host index list; [`gather_routed`] picks
//!   them by [`alltoall_route`]'s device order (the all-to-all send buffers).
//! - [`pack_rows`] / [`unpack_rows`]: several tensors' rows side by side as one byte row, and
//!   back (the packed all-gather).
//! - [`segment_sum_rows`] / [`segment_sum_rows_indexed`]: groups of rows summed in f32 in a
//!   listed order (the all-to-all combine), the listing on the host or already on the device.
//! - [`alltoall_route`]: the all-to-all strategy's routing (send order, counts, each token's
//!   returned rows) built from slot ids on the device, so a dispatch never reads them back.
//! - [`sum_blocks`] / [`sum_blocks_with`]: equal blocks summed element-wise in f32 in block
//!   order (the NCCL group's reduce-scatter and all-reduce), one block optionally read in place.
//!
//! Every sum accumulates in f32 in the order the host code of the same operation uses, so a
//! device run reproduces the host one bit for bit. Kernels: `cuda/kernels/comm_rows.cu`.

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result, Storage, Tensor};

use super::device::CudaDevice;
use super::ffi;
use super::storage::{CudaStorage, tensor_bytes};
use crate::cuda::{ALLTOALL_ROUTE_MAX_RANKS, AllToAllRoute, OwnBlock};

const MODULE: &str = "comm_rows";
const SRC: &str = include_str!("../kernels/comm_rows.cu");
/// Threads per block of the row kernels.
const THREADS: u32 = 256;
/// Threads of the one block of the all-to-all routing kernel (`ROUTE_THREADS` in the source).
const ROUTE_THREADS: u32 = 1024;
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
            .find(|&w| {
                sizes.iter().all(|s| s.is_multiple_of(w))
                    && dst_addr.is_multiple_of(w as u64)
                    && src_addr.is_multiple_of(w as u64)
            })
            .unwrap_or(1)
    }
}

/// Runs one row copy from `src` (of `src_rows` rows) into `dst` on `dev`'s stream; `idx`
/// (device i32 from element `start` on, one entry per row) picks the source row of each
/// destination row; `limit` (a device i32 at an element offset) caps the rows copied at a
/// count only the device knows.
fn copy_rows(
    dev: &CudaDevice,
    dst: &mut CudaStorage,
    src: &CudaStorage,
    src_rows: usize,
    idx: Option<(&CudaStorage, usize)>,
    limit: Option<(&CudaStorage, usize)>,
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
    let idx_v = idx
        .map(|(i, start)| i.view::<i32>(start + c.rows).map(|v| v.slice(start..)))
        .transpose()?;
    let limit_v = limit
        .map(|(l, at)| l.view::<i32>(at + 1).map(|v| v.slice(at..)))
        .transpose()?;
    let null: u64 = 0;
    let src_rows = src_rows as i64;
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
        a.arg(&rows).arg(&width).arg(&src_rows);
        match &limit_v {
            Some(v) => a.arg(v),
            None => a.arg(&null),
        };
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
        copy_rows(&dev, &mut out, s, rows, Some((index_s, 0)), None, &copy)?;
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
        let p = dev.upload(p)?;
        let copy = RowCopy {
            dst_stride: total,
            dst_off: offset,
            src_stride: w,
            src_off: 0,
            rows,
            width: w,
        };
        copy_rows(
            &dev,
            &mut out,
            CudaStorage::of(&p, "pack_rows part")?,
            rows,
            None,
            None,
            &copy,
        )?;
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
            copy_rows(&dev, &mut out, s, rows, None, None, &copy)?;
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
    float_code(t.dtype(), "segment_sum_rows input")?;
    float_code(dtype, "segment_sum_rows output")?;
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
    let mut index = i32_index(offsets.iter().copied(), "segment offsets")?;
    index.extend(i32_index(rows.iter().copied(), "segment rows")?);
    let index = upload_index(&dev, index)?;
    let index_s = CudaStorage::of(&index, "segment index")?;
    segment_sum_launch(&dev, &mut out, dtype, s, t, index_s, 0, offsets.len(), groups)?;
    Ok(dev.tensor(dtype, shape, out))
}

/// Queues the segment sum of `t` (storage `s`) into `out`: `groups` groups whose offsets start
/// at element `offsets_at` of the device i32 buffer `index` and whose row lists start at
/// `rows_at` of it. The 8-wide kernel runs when the row width and both buffers allow 16-byte
/// access (32-byte for f32); the scalar one otherwise. Same sums, same bits.
#[allow(clippy::too_many_arguments)]
fn segment_sum_launch(
    dev: &CudaDevice,
    out: &mut CudaStorage,
    dtype: DType,
    s: &CudaStorage,
    t: &Tensor,
    index: &CudaStorage,
    offsets_at: usize,
    rows_at: usize,
    groups: usize,
) -> Result<()> {
    let in_code = float_code(t.dtype(), "segment_sum_rows input")?;
    let out_code = float_code(dtype, "segment_sum_rows output")?;
    let h = t.row_len();
    if groups == 0 || h == 0 {
        return Ok(());
    }
    let idx_len = index.len_bytes() / 4;
    let off_v = index.view::<i32>(offsets_at + groups + 1)?.slice(offsets_at..);
    let rows_v = index.view::<i32>(idx_len)?.slice(rows_at.min(idx_len)..);
    let stream = dev.stream().clone();
    let (src_addr, dst_addr) = {
        let (a, _ra) = s.bytes().device_ptr(&stream);
        let (b, _rb) = out.bytes().device_ptr(&stream);
        (a, b)
    };
    let align = |code: i32| if code == 0 { 32u64 } else { 16 };
    let vec8 =
        h.is_multiple_of(8) && src_addr.is_multiple_of(align(in_code)) && dst_addr.is_multiple_of(align(out_code));
    let loc = dev.location();
    let (groups_i, h_i, src_rows) = (groups as i64, h as i64, t.rows() as i64);
    let out_len = out.len_bytes();
    let mut dst_v = out.view_mut::<u8>(out_len)?;
    let src_v = s.view::<u8>(s.len_bytes())?;
    if vec8 {
        let func = dev.function(MODULE, SRC, &format!("segment_sum_v8_{in_code}_{out_code}"))?;
        let threads = ((h as u32 / 8).clamp(32, THREADS)).div_ceil(32) * 32;
        let cfg = LaunchConfig {
            grid_dim: (groups.min(MAX_BLOCKS) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        return ffi::launch(&stream, &func, cfg, &loc, |a| {
            a.arg(&mut dst_v)
                .arg(&src_v)
                .arg(&off_v)
                .arg(&rows_v)
                .arg(&groups_i)
                .arg(&h_i)
                .arg(&src_rows);
        });
    }
    let func = dev.function(MODULE, SRC, "segment_sum_rows")?;
    let threads = ((h as u32).clamp(32, THREADS)).div_ceil(32) * 32;
    let cfg = LaunchConfig {
        grid_dim: (groups.min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    ffi::launch(&stream, &func, cfg, &loc, |a| {
        a.arg(&mut dst_v)
            .arg(&out_code)
            .arg(&src_v)
            .arg(&in_code)
            .arg(&off_v)
            .arg(&rows_v)
            .arg(&groups_i)
            .arg(&h_i)
            .arg(&src_rows);
    })
}

/// The device i32 index `index` (a tensor of `index`'s device), checked to hold `need` entries.
fn device_index<'t>(index: &'t Tensor, need: usize, what: &str) -> Result<&'t CudaStorage> {
    if index.dtype() != DType::I32 {
        return Err(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "i32".into(),
            actual: index.dtype().to_string(),
        });
    }
    if index.numel() < need {
        return Err(MoeError::shape(what, format!("at least {need} entries"), index.shape()));
    }
    CudaStorage::of(index, what)
}

/// A dispatch's send rows of the device tensor `t`, queued before the host knows how many
/// there are: rows `route.index[0..m)` of `t`, with `m` (the routing's total, `offsets[tokens]`)
/// read on the device. The result has `route.max_rows` rows, of which the first `m` are
/// written; [`truncate_rows`] it to `m` once the counts are known.
pub fn gather_routed(t: &Tensor, route: &AllToAllRoute) -> Result<Tensor> {
    let s = CudaStorage::of(t, "gather_routed input")?;
    let dev = s.device().clone();
    let idx = device_index(&route.index, route.rows_at(), "gather_routed index")?;
    let rb = row_bytes(t);
    let shape = with_rows(t, route.max_rows);
    let mut out = dev.alloc_storage(tensor_bytes(t.dtype(), &shape))?;
    let copy = RowCopy {
        dst_stride: rb,
        dst_off: 0,
        src_stride: rb,
        src_off: 0,
        rows: route.max_rows,
        width: rb,
    };
    let total = route.offsets_at() + route.tokens;
    copy_rows(&dev, &mut out, s, t.rows(), Some((idx, 0)), Some((idx, total)), &copy)?;
    Ok(dev.tensor(t.dtype(), shape, out))
}

/// The first `rows` rows of the device tensor `t`, sharing its buffer (no copy).
pub fn truncate_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    if rows > t.rows() {
        return Err(MoeError::shape(
            "truncate_rows",
            format!("at least {rows} rows"),
            t.shape(),
        ));
    }
    match t.storage() {
        Storage::Device(s) => {
            CudaStorage::of(t, "truncate_rows input")?;
            Ok(Tensor::from_device(t.dtype(), with_rows(t, rows), s.clone()))
        }
        Storage::Host(_) => t.narrow_rows(0, rows),
    }
}

/// [`segment_sum_rows`] with the listing already on the device: `groups` groups, whose
/// `groups + 1` offsets start at element `offsets_at` of the device i32 tensor `index` and
/// whose row numbers (into `t`) start at element `rows_at`; offsets count from `rows_at`.
/// Rows outside `t` are skipped: check the listing before uploading it.
pub fn segment_sum_rows_indexed(
    t: &Tensor,
    index: &Tensor,
    offsets_at: usize,
    rows_at: usize,
    groups: usize,
    dtype: DType,
) -> Result<Tensor> {
    let s = CudaStorage::of(t, "segment_sum_rows input")?;
    let dev = s.device().clone();
    float_code(t.dtype(), "segment_sum_rows input")?;
    float_code(dtype, "segment_sum_rows output")?;
    let idx = device_index(index, (offsets_at + groups + 1).max(rows_at), "segment_sum_rows index")?;
    let shape = vec![groups, t.row_len()];
    let mut out = dev.alloc_storage(tensor_bytes(dtype, &shape))?;
    segment_sum_launch(&dev, &mut out, dtype, s, t, idx, offsets_at, rows_at, groups)?;
    Ok(dev.tensor(dtype, shape, out))
}

/// `shape` (of `t`'s dtype): the element-wise sum of the `blocks` equal consecutive blocks of
/// the float device tensor `t`, in f32 in block order (the host's `sum_tensors` order).
pub fn sum_blocks(t: &Tensor, blocks: usize, shape: Vec<usize>) -> Result<Tensor> {
    sum_blocks_with(t, None, blocks, shape)
}

/// [`sum_blocks`] where block `own.index` is not in `peers` but already elsewhere: `shape`
/// elements of `own.tensor` from element `own.first` on, and `peers` holds the other
/// `blocks - 1` blocks in block order (a reduce-scatter sums its own rows where they are
/// instead of copying them next to the received ones). Same sums in the same order.
pub fn sum_blocks_with(peers: &Tensor, own: Option<OwnBlock<'_>>, blocks: usize, shape: Vec<usize>) -> Result<Tensor> {
    let s = CudaStorage::of(peers, "sum_blocks input")?;
    let dev = s.device().clone();
    let dt = peers.dtype();
    let code = float_code(dt, "sum_blocks input")?;
    let len: usize = shape.iter().product();
    let in_peers = blocks.saturating_sub(usize::from(own.is_some()));
    if blocks == 0 || peers.numel() != in_peers * len {
        return Err(MoeError::shape(
            "sum_blocks input",
            format!("{in_peers} blocks of {len} elements"),
            peers.shape(),
        ));
    }
    let own_storage = match &own {
        Some(o) => {
            if o.index >= blocks || o.tensor.dtype() != dt || o.first + len > o.tensor.numel() {
                return Err(MoeError::shape(
                    "sum_blocks own block",
                    format!(
                        "block {} of {blocks}, {len} {dt} elements from element {}",
                        o.index, o.first
                    ),
                    o.tensor.shape(),
                ));
            }
            let os = CudaStorage::of(o.tensor, "sum_blocks own block")?;
            if os.device().ordinal() != dev.ordinal() {
                return Err(MoeError::Backend(
                    format!(
                        "sum_blocks: the own block lives on {}, the others on {}",
                        os.device().location(),
                        dev.location()
                    )
                    .into(),
                ));
            }
            Some(os)
        }
        None => None,
    };
    let mut out = dev.alloc_storage(tensor_bytes(dt, &shape))?;
    if len == 0 {
        return Ok(dev.tensor(dt, shape, out));
    }
    let loc = dev.location();
    let stream = dev.stream().clone();
    let esize = dt.size_in_bytes();
    let (src, own_src, dst) = {
        let (a, _ra) = s.bytes().device_ptr(&stream);
        let own_at = match (&own, &own_storage) {
            (Some(o), Some(os)) => {
                let (p, _r) = os.bytes().device_ptr(&stream);
                p + (o.first * esize) as u64
            }
            _ => a,
        };
        let (b, _rb) = out.bytes().device_ptr(&stream);
        (a, own_at, b)
    };
    let own_i = own.as_ref().map_or(-1, |o| o.index as i64);
    let (blocks_i, len_i) = (blocks as i64, len as i64);
    let vec8 = len.is_multiple_of(8) && [src, own_src, dst].iter().all(|p| p.is_multiple_of(16));
    let (name, per_thread) = if vec8 {
        (format!("sum_blocks_v8_{code}"), 8)
    } else {
        ("sum_blocks".to_string(), 1)
    };
    let func = dev.function(MODULE, SRC, &name)?;
    let cfg = LaunchConfig {
        grid_dim: (len.div_ceil(per_thread * THREADS as usize).min(MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // The own block's address travels as a plain u64: its tensor belongs to the caller and,
    // like every buffer, is freed in stream order behind this launch.
    let out_len = out.len_bytes();
    let mut dst_v = out.view_mut::<u8>(out_len)?;
    let src_v = s.view::<u8>(s.len_bytes())?;
    if vec8 {
        ffi::launch(&stream, &func, cfg, &loc, |a| {
            a.arg(&mut dst_v)
                .arg(&src_v)
                .arg(&own_src)
                .arg(&own_i)
                .arg(&blocks_i)
                .arg(&len_i);
        })?;
    } else {
        ffi::launch(&stream, &func, cfg, &loc, |a| {
            a.arg(&mut dst_v)
                .arg(&src_v)
                .arg(&own_src)
                .arg(&own_i)
                .arg(&code)
                .arg(&blocks_i)
                .arg(&len_i);
        })?;
    }
    Ok(dev.tensor(dt, shape, out))
}

/// The all-to-all routing of a dispatch on the device (`a2a_route` in the kernel source): where
/// each of the `[tokens, k]` i32 `slots` goes when slot `s` lives on rank `owner[s]` (`owner`: a
/// device i32 table of `world` ranks, every entry below `world`, checked by the caller when it
/// uploads it). `slots` on the host are uploaded to `owner`'s device. The lists equal the ones
/// the host routing of the all-to-all strategy builds; nothing is read back here.
pub fn alltoall_route(slots: &Tensor, owner: &Tensor, world: usize) -> Result<AllToAllRoute> {
    if world == 0 || world > ALLTOALL_ROUTE_MAX_RANKS {
        return Err(MoeError::config(
            "alltoall world",
            format!("{world} ranks; the device routing takes 1 to {ALLTOALL_ROUTE_MAX_RANKS}"),
        ));
    }
    for (t, what) in [(slots, "alltoall slots"), (owner, "alltoall slot owners")] {
        if t.dtype() != DType::I32 {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "i32".into(),
                actual: t.dtype().to_string(),
            });
        }
    }
    let own = CudaStorage::of(owner, "alltoall slot owners")?;
    let dev = own.device().clone();
    let slots = dev.upload(slots)?;
    let (tokens, k) = (slots.rows(), slots.row_len());
    let max_rows = AllToAllRoute::capacity(tokens, k, world);
    // order, offsets, rows, then the 8-byte masks at an even (8-byte aligned) i32 offset.
    let scratch = (2 * max_rows + tokens + 1).next_multiple_of(2);
    let len = scratch + 2 * tokens;
    let too_big = |what: &str| MoeError::config("alltoall routing", format!("{what} exceeds i32"));
    let as_i32 = |v: usize, what: &str| i32::try_from(v).map_err(|_| too_big(what));
    let args = [
        as_i32(tokens, "tokens")?,
        as_i32(k, "slots per token")?,
        as_i32(owner.numel(), "slots")?,
        as_i32(world, "ranks")?,
        as_i32(max_rows, "rows")?,
        as_i32(scratch, "index length")?,
    ];
    as_i32(len, "index length")?;
    let mut index = dev.alloc_storage(len * 4)?;
    let mut head = dev.alloc_storage((world + 2) * 4)?;
    let func = dev.function(MODULE, SRC, "a2a_route")?;
    let loc = dev.location();
    let stream = dev.stream().clone();
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (ROUTE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let slots_s = CudaStorage::of(&slots, "alltoall slots")?;
    let slots_v = slots_s.view::<i32>(slots.numel())?;
    let owner_v = own.view::<i32>(owner.numel())?;
    let mut index_v = index.view_mut::<i32>(len)?;
    let mut head_v = head.view_mut::<i32>(world + 2)?;
    let [n_i, k_i, slots_i, world_i, max_i, scratch_i] = args;
    ffi::launch(&stream, &func, cfg, &loc, |a| {
        a.arg(&slots_v)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&owner_v)
            .arg(&slots_i)
            .arg(&world_i)
            .arg(&max_i)
            .arg(&scratch_i)
            .arg(&mut index_v)
            .arg(&mut head_v);
    })?;
    Ok(AllToAllRoute {
        index: dev.tensor(DType::I32, vec![len], index),
        head: dev.tensor(DType::I32, vec![1, world + 2], head),
        max_rows,
        tokens,
    })
}

#[cfg(test)]
#[path = "comm_rows_tests.rs"]
mod tests;
