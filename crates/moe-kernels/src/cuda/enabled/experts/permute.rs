//! Step 1 of a forward: the selections permuted into slot-major rows (kernels in
//! `kernels/experts/permute.cu`).
//!
//! Every later step reads the same index buffers: each local slot's first row (`offsets`),
//! each permuted row's selection (`row_sel`), each selection's row (`pos`, for finalize) and
//! the list of row tiles the tensor-core GEMMs walk. A forward whose selections and slots fit
//! one block builds them in one launch (`moe_permute1`; `f8permute_*` also quantizes the FP8
//! GEMV's FC1 input there); larger ones in three (`moe_count`, `moe_scan`, `moe_scatter`)
//! after a memset of the counters. A decode step is a handful of microseconds of work in each
//! kernel, so its launches are what it costs.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result};

use super::super::device::dev_err;
use super::super::ffi;
use super::super::storage::CudaStorage;
use super::{COMMON, DeviceExperts, GemmArgs, dt_suffix};

/// Selections up to which the permutation runs in one block (1,024 threads, 16 selections a
/// thread at most).
const ONE_BLOCK_MAX_SELECTIONS: usize = 16_384;

/// Local slots up to which the permutation runs in one block: three i32 per slot (counts,
/// row and tile offsets) in the 48 KB of shared memory a launch gets without opting in.
const ONE_BLOCK_MAX_SLOTS: usize = 4096;

/// Local slots the three-launch permutation takes (`moe_scan` keeps two i32 per slot in 48 KB).
const SCAN_MAX_SLOTS: usize = 6144;

/// Quantization groups of the FC1 input up to which the one-block permutation also quantizes
/// it (4 per warp): a decode step's few tokens, where a separate launch costs more than the work.
const PROLOGUE_MAX_GROUPS: usize = 128;

/// Addresses and sizes of a forward's permutation; it owns the index buffers, which are freed
/// on the stream after the kernels queued before the permutation is dropped.
pub(crate) struct Permutation {
    pub offsets: u64,
    pub tiles: u64,
    pub num_tiles: u64,
    pub row_sel: u64,
    /// Each selection's permuted row (-1: another rank's slot).
    pub pos: u64,
    /// The number of permuted rows (`offsets[S]`), on the device.
    pub rows: u64,
    /// `PermuteShape::counters` zeroed i32 for the GEMMs' own use.
    pub counters: u64,
    pub max_tiles: usize,
    pub tokens: usize,
    pub top_k: usize,
    _buffers: CudaStorage,
}

impl Permutation {
    /// The arguments of one GEMM over the permuted rows: input `a` and output `out`
    /// addresses, f32 `bias` (0: none), `(k, units)` (FC1: H and I; FC2: I and H), `gated`
    /// (FC1 of a gated activation). `out_f32` is 0.
    pub(crate) fn gemm_args(
        &self,
        (a, out): (u64, u64),
        bias: u64,
        (k, units): (usize, usize),
        gated: bool,
    ) -> GemmArgs {
        GemmArgs {
            a,
            row_sel: self.row_sel,
            top_k: self.top_k as i32,
            offsets: self.offsets,
            tiles: self.tiles,
            num_tiles: self.num_tiles,
            out,
            bias,
            k: k as i32,
            units: units as i32,
            gated: i32::from(gated),
            out_f32: 0,
        }
    }
}

/// The FP8 GEMV's FC1 input for the one-block permutation to quantize: `rows x cols` values
/// of `dtype` at `src` into E4M3 `codes` and, for dynamic groups (`scale` 0), f32 `scales`.
pub(crate) struct PrologueQuant {
    pub src: u64,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
    pub codes: u64,
    pub scales: u64,
}

/// How a forward's permutation is launched.
#[derive(Clone, Copy)]
pub(crate) struct PermuteShape {
    /// Tokens and selections per token.
    pub tokens: usize,
    pub top_k: usize,
    /// The first local slot's global id.
    pub slot_start: usize,
    /// Rows per tile of the GEMM (1 << 20: one tile per non-empty slot).
    pub bm: usize,
    /// Row tiles the TMA kernels raster together (0: no groups).
    pub group: i32,
    /// Zeroed i32 counters the GEMMs use (the FP8 GEMV's per-group completion counts).
    pub counters: usize,
}

/// Byte offsets of the index buffers in one allocation (16-byte aligned: the tile list is
/// read as `int4`): the GEMMs' `counters` and the per-slot counters `counts` and `cursor`
/// (zeroed before the three-launch permutation: all before `offsets`), then `offsets`,
/// `pos`, `row_sel`, `tiles` and `num_tiles`.
struct IndexBuffers {
    counters: usize,
    counts: usize,
    cursor: usize,
    offsets: usize,
    pos: usize,
    row_sel: usize,
    tiles: usize,
    num_tiles: usize,
    bytes: usize,
}

impl IndexBuffers {
    fn new(slots: usize, selections: usize, max_tiles: usize, counters: usize) -> IndexBuffers {
        let mut end = 0;
        let mut take = |bytes: usize| {
            let at = end;
            end += bytes.div_ceil(16) * 16;
            at
        };
        let counters = take(counters * 4);
        let counts = take(slots.max(1) * 4);
        let cursor = take(slots.max(1) * 4);
        let offsets = take((slots + 1) * 4);
        let pos = take(selections * 4);
        let row_sel = take(selections * 4);
        let tiles = take(max_tiles * 16);
        let num_tiles = take(4);
        IndexBuffers {
            counters,
            counts,
            cursor,
            offsets,
            pos,
            row_sel,
            tiles,
            num_tiles,
            bytes: end,
        }
    }
}

impl DeviceExperts {
    /// Whether the one-block permutation of a forward of `selections` can also quantize
    /// `tokens x cols` FC1 inputs.
    pub(super) fn prologue_quantizes(&self, selections: usize, tokens: usize, cols: usize) -> bool {
        self.one_block(selections) && tokens * (cols / 128) <= PROLOGUE_MAX_GROUPS
    }

    fn one_block(&self, selections: usize) -> bool {
        selections <= ONE_BLOCK_MAX_SELECTIONS && self.num_slots <= ONE_BLOCK_MAX_SLOTS
    }

    /// Queues the permutation of the slot ids at `ids` (`[tokens, top_k]` i32, global slot
    /// ids). `quant`, given only where [`Self::prologue_quantizes`] holds, is quantized in
    /// the same launch.
    pub(super) fn permute(&self, ids: u64, shape: PermuteShape, quant: Option<&PrologueQuant>) -> Result<Permutation> {
        let dev = &self.dev;
        let loc = dev.location();
        let s_local = self.num_slots;
        let nk = shape.tokens * shape.top_k;
        let max_tiles = nk.div_ceil(shape.bm.min(nk).max(1)) + s_local;
        let index = IndexBuffers::new(s_local, nk, max_tiles, shape.counters);
        let mut buffers = dev.alloc_storage(index.bytes)?;
        let base = buffers.ptr(dev);
        let at = |offset: usize| base + offset as u64;
        let (offsets, tiles, num_tiles, pos, row_sel) = (
            at(index.offsets),
            at(index.tiles),
            at(index.num_tiles),
            at(index.pos),
            at(index.row_sel),
        );
        let (nk_i, start_i, s_i, bm_i) = (nk as i32, shape.slot_start as i32, s_local as i32, shape.bm as i32);
        let (q_rows, q_cols) = quant.map_or((0, 0), |q| (q.rows as i32, q.cols as i32));
        let (counters, counters_i) = (at(index.counters), shape.counters as i32);
        if self.one_block(nk) {
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: (3 * s_local.max(1) * 4) as u32,
            };
            let name = match quant {
                Some(q) => format!("f8permute_{}", dt_suffix(q.dtype)?),
                None => "moe_permute1".to_string(),
            };
            let f = self.kernel(COMMON, &name)?;
            ffi::launch(dev.stream(), &f, cfg, &loc, |a| {
                a.arg(&ids)
                    .arg(&nk_i)
                    .arg(&start_i)
                    .arg(&s_i)
                    .arg(&bm_i)
                    .arg(&shape.group)
                    .arg(&offsets)
                    .arg(&tiles)
                    .arg(&num_tiles)
                    .arg(&pos)
                    .arg(&row_sel)
                    .arg(&counters)
                    .arg(&counters_i);
                if let Some(q) = quant {
                    a.arg(&q.src)
                        .arg(&q_rows)
                        .arg(&q_cols)
                        .arg(&q.scale)
                        .arg(&q.codes)
                        .arg(&q.scales);
                }
            })
            .map_err(|e| dev_err(&loc, &name, e))?;
        } else {
            if s_local > SCAN_MAX_SLOTS {
                return Err(MoeError::config(
                    "local slots",
                    format!("{s_local} exceed the CUDA scan's {SCAN_MAX_SLOTS}"),
                ));
            }
            buffers.zero_prefix(index.offsets)?;
            let grid = LaunchConfig {
                grid_dim: (nk.div_ceil(256).max(1) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let counts = at(index.counts);
            let f = self.kernel(COMMON, "moe_count")?;
            ffi::launch(dev.stream(), &f, grid, &loc, |a| {
                a.arg(&ids).arg(&nk_i).arg(&start_i).arg(&s_i).arg(&counts);
            })?;
            let f = self.kernel(COMMON, "moe_scan")?;
            let scan_cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: (2 * s_local.max(1) * 4) as u32,
            };
            ffi::launch(dev.stream(), &f, scan_cfg, &loc, |a| {
                a.arg(&counts)
                    .arg(&s_i)
                    .arg(&bm_i)
                    .arg(&shape.group)
                    .arg(&offsets)
                    .arg(&tiles)
                    .arg(&num_tiles);
            })?;
            let f = self.kernel(COMMON, "moe_scatter")?;
            let cursor = at(index.cursor);
            ffi::launch(dev.stream(), &f, grid, &loc, |a| {
                a.arg(&ids)
                    .arg(&nk_i)
                    .arg(&start_i)
                    .arg(&s_i)
                    .arg(&offsets)
                    .arg(&cursor)
                    .arg(&pos)
                    .arg(&row_sel);
            })?;
        }
        Ok(Permutation {
            offsets,
            tiles,
            num_tiles,
            row_sel,
            pos,
            rows: offsets + 4 * s_local as u64,
            counters,
            max_tiles,
            tokens: shape.tokens,
            top_k: shape.top_k,
            _buffers: buffers,
        })
    }
}
