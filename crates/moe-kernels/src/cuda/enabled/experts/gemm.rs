//! The GEMMs of every path but FP8 x FP8 (`fp8.rs`): launches of the GEMV, `mma.sync`,
//! cp.async `wgmma` and warp-specialized TMA kernels over the permuted rows, and the FP8
//! activation quantize-dequantize (QDQ) the 16-bit paths apply to their inputs.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result, Tensor};

use super::super::device::{CudaDevice, WGMMA_DEFINE, dev_err};
use super::super::ffi::{self, MapElem};
use super::super::storage::CudaStorage;
use super::{
    COMMON, DeviceExperts, Format, GemmArgs, MODULE, Path, SRC, TMA_NARROW_BELOW_WAVES, TMA_STAGES, WG_STAGES,
    WeightArgs, act_args, dt_suffix,
};
use crate::cpu::act_quant::ActQuant;

impl DeviceExperts {
    pub(super) fn gemm(
        &self,
        path: Path,
        fc1: bool,
        g: GemmArgs,
        w: WeightArgs,
        max_tiles: usize,
        selections: usize,
    ) -> Result<()> {
        let dev = &self.dev;
        let suffix = format!("{}_{}", dt_suffix(self.dtype)?, self.format.suffix());
        let which = if fc1 { "fc1" } else { "fc2" };
        let act = act_args(self.dims.activation);
        let units = g.units as usize;
        let cols = if fc1 && g.gated != 0 { 2 * units } else { units };
        let tiles = |bm_shared: u32| LaunchConfig {
            grid_dim: (max_tiles as u32, cols.div_ceil(128) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: bm_shared,
        };
        let (name, cfg, variant) = match path {
            Path::Gemv { one_row } => (
                format!("gemv{}_{which}_{suffix}", if one_row { "1" } else { "" }),
                LaunchConfig {
                    // At most one block row per non-empty slot (see `moe_scan`).
                    grid_dim: (
                        units.div_ceil(4) as u32,
                        selections.min(self.num_slots).max(1) as u32,
                        1,
                    ),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
                self.variant()?,
            ),
            Path::Mma { bm } => (format!("mma_{which}_{suffix}_{bm}"), tiles(0), self.variant()?),
            Path::Tma => return self.gemm_tma(fc1, g, w, max_tiles, selections),
            Path::Fp8(_) => {
                return Err(MoeError::lifecycle(
                    "FP8 tensor-core GEMMs are queued by forward_fp8, not gemm",
                ));
            }
            Path::Wgmma { bm } => {
                // WG_STAGES stages of A (bm x 128 B) and B (128 rows x 128 B of 16-bit values,
                // or of raw codes), one decoded B tile for codes, 1 KB of alignment slack.
                let b_stage = match self.format {
                    Format::Float => 128 * 128,
                    Format::Mxfp4 => 128 * 32,
                    _ => 128 * 64,
                };
                let decoded = if self.format == Format::Float { 0 } else { 128 * 128 };
                let bytes = WG_STAGES * (bm * 128 + b_stage) + decoded + 1024;
                (
                    format!("wg_{which}_{suffix}_{bm}"),
                    tiles(bytes as u32),
                    format!("{} {WGMMA_DEFINE}", self.variant()?),
                )
            }
        };
        if self.num_slots == 0 {
            return Ok(());
        }
        let f = self.kernel_with_smem(&variant, &name, cfg.shared_mem_bytes)?;
        ffi::launch(dev.stream(), &f, cfg, &dev.location(), |a| {
            a.arg(&g).arg(&w).arg(&act);
        })
        .map_err(|e| dev_err(&dev.location(), &name, e))
    }
}

impl DeviceExperts {
    /// Queues one GEMM of the TMA path: `g.a` holds `selections` contiguous rows of `g.k`
    /// values (the permuted rows first), the weights `w` one `w.rows x w.cols` matrix per slot.
    fn gemm_tma(&self, fc1: bool, g: GemmArgs, w: WeightArgs, max_tiles: usize, selections: usize) -> Result<()> {
        if self.num_slots == 0 {
            return Ok(());
        }
        let dev = &self.dev;
        let loc = dev.location();
        let elem = if self.dtype == DType::BF16 {
            MapElem::Bf16
        } else {
            MapElem::F16
        };
        // A in 64-row boxes: a tile copies only the boxes its slot's rows reach.
        let ta = ffi::tensor_map(g.a, elem, selections, g.k as usize, 64, &loc)?;
        let tb = ffi::tensor_map(w.w, elem, self.num_slots * w.rows as usize, w.cols as usize, 128, &loc)?;
        let units = g.units as usize;
        // A gated FC1 tile covers 128 channels (their up and gate rows), any other 256 or 128
        // columns.
        let gated = fc1 && g.gated != 0;
        let wide_blocks = max_tiles * units.div_ceil(256);
        let bn = if gated || wide_blocks >= TMA_NARROW_BELOW_WAVES * dev.multiprocessors() as usize {
            256
        } else {
            128
        };
        let n_tiles = if gated { units.div_ceil(128) } else { units.div_ceil(bn) };
        let blocks = max_tiles * n_tiles;
        if blocks > i32::MAX as usize {
            return Err(MoeError::config(
                "tokens per forward",
                format!("{selections} selections need {blocks} GEMM blocks (more than one launch holds)"),
            ));
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (384, 1, 1),
            // The stages, a full and an empty mbarrier per stage, 1 KB of alignment slack.
            shared_mem_bytes: (TMA_STAGES * (128 * 128 + bn * 128) + 16 * TMA_STAGES + 1024) as u32,
        };
        let name = format!(
            "tma_{}_{}_{}_{bn}",
            if fc1 { "fc1" } else { "fc2" },
            dt_suffix(self.dtype)?,
            self.format.suffix()
        );
        let f = self.hopper_kernel(&name, cfg.shared_mem_bytes)?;
        let act = act_args(self.dims.activation);
        let n_tiles_i = n_tiles as i32;
        ffi::launch(dev.stream(), &f, cfg, &loc, |a| {
            a.arg(&g).arg(&w).arg(&act).arg(&ta).arg(&tb).arg(&n_tiles_i);
        })
        .map_err(|e| dev_err(&loc, &name, e))
    }
}

/// Queues `out = QDQ(in)` of `rows x cols` activations (`q`: the format's FP8 activation
/// quantization); `row_limit` is the device address of a row count that caps `rows`.
pub(super) fn qdq(
    dev: &CudaDevice,
    q: ActQuant,
    (src, src_dt): (&CudaStorage, DType),
    (dst, dst_dt): (&CudaStorage, DType),
    rows: usize,
    cols: usize,
    row_limit: Option<u64>,
) -> Result<()> {
    let (mode, scale, group) = match q {
        ActQuant::Fp8PerTensor { scale } if scale > 0.0 && scale.is_finite() => (1i32, scale, 1i32),
        ActQuant::Fp8Group { group } if group > 0 => (2, 1.0, group as i32),
        other => {
            return Err(MoeError::config(
                "activation quantization",
                format!("{other:?} has no CUDA kernel"),
            ));
        }
    };
    if rows * cols == 0 {
        return Ok(());
    }
    let name = format!("qdq_{}_{}", dt_suffix(src_dt)?, dt_suffix(dst_dt)?);
    let f = dev.function_variant(MODULE, SRC, Some(COMMON), &name)?;
    let threads = if mode == 1 {
        rows * cols
    } else {
        rows * cols.div_ceil(group as usize) * 32
    };
    let cfg = LaunchConfig {
        grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (i, o, r, c, lim) = (
        src.ptr(dev),
        dst.ptr(dev),
        rows as i32,
        cols as i32,
        row_limit.unwrap_or(0),
    );
    ffi::launch(dev.stream(), &f, cfg, &dev.location(), |a| {
        a.arg(&i)
            .arg(&o)
            .arg(&r)
            .arg(&c)
            .arg(&mode)
            .arg(&scale)
            .arg(&group)
            .arg(&lim);
    })
}

/// Activations `x [N, H]` (device) quantize-dequantized as `q` prescribes, in a new device
/// tensor of `x`'s dtype: the device arm of `ops::qdq_activations`.
pub fn qdq_device(q: &ActQuant, x: &Tensor) -> Result<Tensor> {
    let src = CudaStorage::of(x, "x")?;
    let dev = src.device().clone();
    if x.shape().len() != 2 {
        return Err(MoeError::shape("x", "[N, H]", x.shape()));
    }
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    if q.is_none() {
        return Ok(x.clone());
    }
    let out = dev.alloc_storage(src.len_bytes())?;
    qdq(&dev, *q, (src, x.dtype()), (&out, x.dtype()), rows, cols, None)?;
    Ok(dev.tensor(x.dtype(), x.shape().to_vec(), out))
}
