//! FP8 x FP8 experts on Hopper's tensor cores (kernels in `kernels/experts/fp8.cu`).
//!
//! Layers whose weights are E4M3 and whose format quantizes activations to E4M3 (DeepSeek's
//! 128 x 128 weight blocks with dynamic 1 x 128 activation groups; ModelOpt's per-tensor FP8
//! with static input scales) run on this path: activations are quantized once, to codes and
//! f32 scales, and the GEMMs read those codes as they are (no decode to 16-bit, no
//! quantize-dequantize). After the permutation of `DeviceExperts::forward`:
//! 1. `f8quant_*`: the FC1 input to codes and group scales, once per token (a decode step's
//!    few tokens in the permutation's launch, `f8permute_*`); on the TMA path `f8expand` then
//!    copies each token's codes to its selections' rows, one block of rows per slot;
//! 2. FC1 with the activation fused: the TMA kernel quantizes its output to FC2's codes and
//!    group scales in its epilogue; the GEMV writes f32, and the last of its blocks to finish a
//!    slot's 128-channel group quantizes that group;
//! 3. FC2 into `y` in the layer's dtype (the caller's finalize sums each token's rows).
//!
//! Which GEMM runs is data: [`FP8_KERNELS`], by average rows per slot.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result};

use super::super::device::dev_err;
use super::super::ffi::{self, MapElem};
use super::super::storage::CudaStorage;
use super::permute::{Permutation, PrologueQuant};
use super::{COMMON, DeviceExperts, Format, GemmArgs, WeightArgs, act_args, dt_suffix};
use crate::cpu::act_quant::ActQuant;

/// Scales of the FP8 inputs and outputs of one GEMM (`QuantIo` in `experts/fp8.cu`; same field order
/// and types).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantIo {
    /// `[rows, K / 128]` f32 group scales of the input codes, or 0: `in_scale` for all.
    pub in_scales: u64,
    pub in_scale: f32,
    /// `[rows, units / 128]` group scales FC1's TMA epilogue writes, or 0: `out_scale`.
    pub out_scales: u64,
    pub out_scale: f32,
    /// The GEMV's FC1 (else 0): FC2's input codes, quantized by the last block of each
    /// 128-channel group, and the zeroed counters of blocks done per [slot tile, group].
    pub out_codes: u64,
    pub group_done: u64,
}

/// The FP8 GEMM kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fp8Kernel {
    /// `mma.sync` m16n8k32 E4M3: 16 weight rows against passes of 8 or 16 input rows, each
    /// weight byte read once per pass (decode and small batches; [`gemv_rows_per_pass`]).
    Gemv,
    /// Warp-specialized TMA + `wgmma` m64n128k32 E4M3, 128-row tiles (prefill).
    Tma,
}

/// The kernel by average rows per slot: the first entry whose bound the average does not
/// exceed. The GEMV reads each slot's weights once per pass of up to 16 rows, so it runs up to
/// 8 on average; from there the TMA kernel's 128-row tiles read them once per 128 rows.
pub(crate) const FP8_KERNELS: [(usize, Fp8Kernel); 2] = [(8, Fp8Kernel::Gemv), (usize::MAX, Fp8Kernel::Tma)];

/// Average rows per slot up to which the GEMV takes passes of 8 rows whatever the weights: few
/// slots then pass 8 rows, and the 8-row kernel keeps more blocks per multiprocessor (3 of the
/// gated FC1's against 2).
const GEMV_8_ROWS_UP_TO: usize = 4;

/// Rows per GEMV pass (8 or 16) at `avg_rows` per slot, where `resident` blocks of the 8-row
/// kernel read `slice` weight bytes each (16 units, and as many gate rows, times K) from an
/// L2 of `l2` bytes. A slot's second pass of 8 re-reads its block's slice soon after the
/// first: from the L2 while the resident blocks' slices fit there, else from memory, and then
/// passes of 16 (each weight fragment against two sets of 8 rows) read the weights once.
/// Measured on an H100 (50 MB L2): DeepSeek-V3's FC1 (396 x 229 KB = 90 MB) at 256 tokens,
/// 8 rows a slot, 5.00 ms with passes of 8 against 4.11 with 16; Qwen3-30B-A3B's (25 MB) at
/// 128 tokens 0.286 against 0.327.
pub(crate) fn gemv_rows_per_pass(avg_rows: usize, resident: usize, slice: usize, l2: usize) -> usize {
    if avg_rows > GEMV_8_ROWS_UP_TO && resident.saturating_mul(slice) > l2 {
        16
    } else {
        8
    }
}

/// Output units of one FP8 GEMV block (`F8_UNITS` in `experts/fp8.cu`).
const F8_GEMV_UNITS: usize = 16;

/// FP8 block side of the tensor-core path: weight blocks are 128 x 128 and activation groups
/// 1 x 128 (one `wgmma` K block).
const BLOCK: usize = 128;

/// Pipeline depth of the FP8 TMA kernel (`F8_STAGES` in `experts/fp8.cu`); a stage holds A (128 rows)
/// and B (256 weight rows) of 128 codes. With the n-split exchange the kernel's shared memory
/// is 226 KB of the 227 KB a block may have: no room for a fifth stage.
const STAGES: usize = 4;

/// How this layer's FP8 scales are laid out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scheme {
    /// 128 x 128 weight blocks, dynamic 1 x 128 activation groups.
    Block,
    /// One weight scale per slot; static activation scales of FC1's and FC2's inputs.
    PerTensor { fc1: f32, fc2: f32 },
}

impl Scheme {
    /// The static scale of a GEMM input (0 for dynamic groups: the kernels' marker).
    fn input_scale(self, fc1: bool) -> f32 {
        match self {
            Scheme::Block => 0.0,
            Scheme::PerTensor { fc1: a, fc2: b } => {
                if fc1 {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// FC1's input of a forward on the FP8 path ([`DeviceExperts::fp8_input`]).
pub(crate) struct Fp8Input {
    path: Fp8Path,
    codes: CudaStorage,
    scales: Option<CudaStorage>,
    /// The quantization the permutation's launch does (`None`: `forward_fp8` quantizes).
    pub prologue: Option<PrologueQuant>,
    /// Zeroed i32 the GEMMs need from the permutation (the GEMV's per-group counts).
    pub counters: usize,
}

/// A forward's FP8 path: the GEMM kernel for its shape and the layer's scale layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Fp8Path {
    kernel: Fp8Kernel,
    scheme: Scheme,
}

impl Fp8Path {
    /// Whether the TMA kernel runs (128-row tiles rastered in groups; else the GEMV).
    pub(super) fn tma(self) -> bool {
        self.kernel == Fp8Kernel::Tma
    }
}

fn positive(s: f32) -> bool {
    s > 0.0 && s.is_finite()
}

impl DeviceExperts {
    fn fp8_scheme(&self) -> Option<Scheme> {
        let aligned = self.dims.hidden.is_multiple_of(BLOCK) && self.dims.inter.is_multiple_of(BLOCK);
        if !self.dev.has_wgmma() || self.dtype == DType::F32 || !aligned {
            return None;
        }
        match (self.format, self.fc1_input, self.fc2_input) {
            (
                Format::Fp8Block { b0: BLOCK, b1: BLOCK },
                ActQuant::Fp8Group { group: BLOCK },
                ActQuant::Fp8Group { group: BLOCK },
            ) => Some(Scheme::Block),
            (Format::Fp8PerTensor, ActQuant::Fp8PerTensor { scale: fc1 }, ActQuant::Fp8PerTensor { scale: fc2 })
                if positive(fc1) && positive(fc2) =>
            {
                Some(Scheme::PerTensor { fc1, fc2 })
            }
            _ => None,
        }
    }

    /// The FP8 path for `avg_rows` rows per slot, or `None` where the layer has no FP8 x FP8
    /// path (other formats, f32, sizes off the 128 grid, devices without sm_90a's `wgmma`).
    pub(super) fn fp8_path(&self, avg_rows: usize) -> Option<Fp8Path> {
        let scheme = self.fp8_scheme()?;
        FP8_KERNELS
            .iter()
            .find(|(bound, _)| avg_rows <= *bound)
            .map(|&(_, kernel)| Fp8Path { kernel, scheme })
    }

    /// FC1's input codes of a forward of `tokens` tokens and `selections` selections on
    /// `path`: per token for the GEMV (it gathers rows itself), per permuted row for the TMA
    /// kernel (each slot's rows one block for its copies). The GEMV's are quantized by the
    /// permutation's launch where it can (`prologue`), else by [`Self::forward_fp8`].
    pub(super) fn fp8_input(
        &self,
        path: Fp8Path,
        xs: &CudaStorage,
        tokens: usize,
        selections: usize,
    ) -> Result<Fp8Input> {
        let dev = &self.dev;
        let h = self.dims.hidden;
        let rows = if path.tma() { selections } else { tokens };
        let codes = dev.alloc_storage(rows * h)?;
        let scales = if path.scheme == Scheme::Block {
            Some(dev.alloc_storage(rows * (h / BLOCK) * 4)?)
        } else {
            None
        };
        let prologue = (!path.tma() && self.prologue_quantizes(selections, tokens, h)).then(|| PrologueQuant {
            src: xs.ptr(dev),
            dtype: self.dtype,
            rows,
            cols: h,
            scale: path.scheme.input_scale(true),
            codes: codes.ptr(dev),
            scales: scales.as_ref().map_or(0, |s| s.ptr(dev)),
        });
        Ok(Fp8Input {
            path,
            codes,
            scales,
            prologue,
            // One per (GEMV block row, FC1 output group); the grid has a block row per slot
            // that has rows, at most.
            counters: if path.tma() {
                0
            } else {
                selections.min(self.num_slots) * (self.dims.inter / BLOCK)
            },
        })
    }

    /// Steps 2-4 of the forward on the FP8 path: `y [rows, H]` in the layer's dtype, one row
    /// per permuted selection.
    pub(super) fn forward_fp8(&self, input: Fp8Input, xs: &CudaStorage, p: &Permutation) -> Result<CudaStorage> {
        let Fp8Input {
            path: Fp8Path { kernel, scheme },
            codes: x_codes,
            scales: x_scales,
            prologue,
            ..
        } = input;
        let dev = &self.dev;
        let (h, inter) = (self.dims.hidden, self.dims.inter);
        let nk = p.tokens * p.top_k;
        let grouped = scheme == Scheme::Block;
        let tma = kernel == Fp8Kernel::Tma;

        // 1. FC1 input codes, unless the permutation's launch quantized them.
        if prologue.is_none() {
            if tma {
                // Each token once, then its codes copied to each of its selections' rows.
                let tok_codes = dev.alloc_storage(p.tokens * h)?;
                let tok_scales = x_scales
                    .as_ref()
                    .map(|_| dev.alloc_storage(p.tokens * (h / BLOCK) * 4))
                    .transpose()?;
                let tq = (&tok_codes, tok_scales.as_ref());
                self.quantize(
                    (xs.ptr(dev), self.dtype),
                    0,
                    (p.tokens, h),
                    scheme.input_scale(true),
                    tq,
                )?;
                self.expand(p, h, tq, (&x_codes, x_scales.as_ref()))?;
            } else {
                let q = (&x_codes, x_scales.as_ref());
                self.quantize((xs.ptr(dev), self.dtype), 0, (p.tokens, h), scheme.input_scale(true), q)?;
            }
        }

        // 2. FC1 with the activation, then its output as FC2's codes.
        let act_codes = dev.alloc_storage(nk * inter)?;
        let act_scales = if grouped {
            Some(dev.alloc_storage(nk * (inter / BLOCK) * 4)?)
        } else {
            None
        };
        let io1 = QuantIo {
            in_scales: x_scales.as_ref().map_or(0, |s| s.ptr(dev)),
            in_scale: scheme.input_scale(true),
            out_scales: act_scales.as_ref().map_or(0, |s| s.ptr(dev)),
            out_scale: scheme.input_scale(false),
            out_codes: 0,
            group_done: 0,
        };
        let gated = self.dims.activation.is_gated();
        let fc1 =
            |a: u64, out: u64| p.gemm_args((a, out), self.b13.as_ref().map_or(0, |b| b.ptr(dev)), (h, inter), gated);
        let w13 = self.w13.args(dev, self.format);
        if tma {
            self.fp8_tma(true, fc1(x_codes.ptr(dev), act_codes.ptr(dev)), w13, io1, p, nk)?;
        } else {
            // f32 activations, which the GEMV's last block of each group quantizes to FC2's
            // codes (from f32, as the host does: bf16-rounded values would move some codes).
            let act32 = dev.alloc_storage(nk * inter * 4)?;
            let mut g = fc1(x_codes.ptr(dev), act32.ptr(dev));
            g.out_f32 = 1;
            let io = QuantIo {
                out_codes: act_codes.ptr(dev),
                group_done: p.counters,
                ..io1
            };
            self.fp8_gemv(true, g, w13, io, nk)?;
            drop(act32);
        }

        // 3. FC2.
        let y = dev.alloc_storage(nk * h * self.dtype.size_in_bytes())?;
        let fc2 = p.gemm_args(
            (act_codes.ptr(dev), y.ptr(dev)),
            self.b2.as_ref().map_or(0, |b| b.ptr(dev)),
            (inter, h),
            false,
        );
        let io2 = QuantIo {
            in_scales: act_scales.as_ref().map_or(0, |s| s.ptr(dev)),
            in_scale: scheme.input_scale(false),
            out_scales: 0,
            out_scale: 0.0,
            out_codes: 0,
            group_done: 0,
        };
        let w2 = self.w2.args(dev, self.format);
        if tma {
            self.fp8_tma(false, fc2, w2, io2, p, nk)?;
        } else {
            self.fp8_gemv(false, fc2, w2, io2, nk)?;
        }
        // Scratch is freed on the stream after the kernels that read it.
        drop((x_codes, x_scales, act_codes, act_scales));
        Ok(y)
    }

    /// Queues `f8quant_<src dtype>`: `rows x cols` values at `src` to E4M3 codes and, for
    /// dynamic groups (`scale` 0), f32 group scales. `limit` (0: none): the device address of
    /// a row count that caps `rows`.
    fn quantize(
        &self,
        (src, src_dt): (u64, DType),
        limit: u64,
        (rows, cols): (usize, usize),
        scale: f32,
        (codes, scales): (&CudaStorage, Option<&CudaStorage>),
    ) -> Result<()> {
        if rows * cols == 0 {
            return Ok(());
        }
        let dev = &self.dev;
        let name = format!("f8quant_{}", dt_suffix(src_dt)?);
        let f = self.kernel(COMMON, &name)?;
        // Eight groups a block; rows beyond the grid's 65535 are strided.
        let cfg = LaunchConfig {
            grid_dim: ((cols / BLOCK).div_ceil(8) as u32, rows.min(65_535) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_i, cols_i) = (rows as i32, cols as i32);
        let (codes_p, scales_p) = (codes.ptr(dev), scales.map_or(0, |s| s.ptr(dev)));
        ffi::launch(dev.stream(), &f, cfg, &dev.location(), |a| {
            a.arg(&src)
                .arg(&limit)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&scale)
                .arg(&codes_p)
                .arg(&scales_p);
        })
        .map_err(|e| dev_err(&dev.location(), &name, e))
    }

    /// Queues `f8expand`: each permuted row of `p` gets its token's `cols` codes and group
    /// scales from `tokens` into `rows`.
    fn expand(
        &self,
        p: &Permutation,
        cols: usize,
        tokens: (&CudaStorage, Option<&CudaStorage>),
        rows: (&CudaStorage, Option<&CudaStorage>),
    ) -> Result<()> {
        let dev = &self.dev;
        let nk = p.tokens * p.top_k;
        let f = self.kernel(COMMON, "f8expand")?;
        let cfg = LaunchConfig {
            grid_dim: (nk.max(1) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let ptr = |s: Option<&CudaStorage>| s.map_or(0, |s| s.ptr(dev));
        let (tc, ts, rc, rs) = (tokens.0.ptr(dev), ptr(tokens.1), rows.0.ptr(dev), ptr(rows.1));
        let (top_k, cols_i) = (p.top_k as i32, cols as i32);
        ffi::launch(dev.stream(), &f, cfg, &dev.location(), |a| {
            a.arg(&tc)
                .arg(&ts)
                .arg(&p.row_sel)
                .arg(&top_k)
                .arg(&p.rows)
                .arg(&cols_i)
                .arg(&rc)
                .arg(&rs);
        })
        .map_err(|e| dev_err(&dev.location(), "f8expand", e))
    }

    fn fp8_gemv(&self, fc1: bool, g: GemmArgs, w: WeightArgs, q: QuantIo, selections: usize) -> Result<()> {
        if self.num_slots == 0 {
            return Ok(());
        }
        let dev = &self.dev;
        let variant = self.variant()?;
        let name = |rows: usize| -> Result<String> {
            Ok(format!(
                "f8gemv{rows}_{}_{}_{}",
                if fc1 { "fc1" } else { "fc2" },
                dt_suffix(self.dtype)?,
                self.format.suffix()
            ))
        };
        let f8 = self.kernel(&variant, &name(8)?)?;
        let cell = &self.fp8_gemv_resident[usize::from(!fc1)];
        let resident = match cell.get() {
            Some(&r) => r,
            None => {
                let per_sm = f8
                    .occupancy_max_active_blocks_per_multiprocessor(128, 0, None)
                    .map_err(|e| dev_err(&dev.location(), "reading the FP8 GEMV's occupancy", e))?;
                *cell.get_or_init(|| per_sm as usize * dev.multiprocessors() as usize)
            }
        };
        let slice = F8_GEMV_UNITS * if fc1 && g.gated != 0 { 2 } else { 1 } * g.k as usize;
        let avg = selections.div_ceil(self.num_slots);
        let rows = gemv_rows_per_pass(avg, resident, slice, dev.l2_bytes());
        let name = name(rows)?;
        let f = if rows == 8 { f8 } else { self.kernel(&variant, &name)? };
        let cfg = LaunchConfig {
            // At most one block row per non-empty slot (the scan's one tile per slot).
            grid_dim: (
                (g.units as usize).div_ceil(16) as u32,
                selections.min(self.num_slots).max(1) as u32,
                1,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let act = act_args(self.dims.activation);
        ffi::launch(dev.stream(), &f, cfg, &dev.location(), |a| {
            a.arg(&g).arg(&w).arg(&act).arg(&q);
        })
        .map_err(|e| dev_err(&dev.location(), &name, e))
    }

    fn fp8_tma(&self, fc1: bool, g: GemmArgs, w: WeightArgs, q: QuantIo, p: &Permutation, rows: usize) -> Result<()> {
        if self.num_slots == 0 {
            return Ok(());
        }
        let dev = &self.dev;
        let loc = dev.location();
        // A in 64-row boxes (a tile copies only the boxes its slot's rows reach), B in two
        // 128-row boxes per stage.
        let ta = ffi::tensor_map(g.a, MapElem::U8, rows, g.k as usize, 64, &loc)?;
        let tb = ffi::tensor_map(
            w.w,
            MapElem::U8,
            self.num_slots * w.rows as usize,
            w.cols as usize,
            128,
            &loc,
        )?;
        let units = g.units as usize;
        // A gated FC1 tile covers 128 channels (their up and gate rows), any other 256 columns.
        let n_tiles = if fc1 && g.gated != 0 {
            units.div_ceil(128)
        } else {
            units.div_ceil(256)
        };
        // Work items: (row tile, column tile) pairs; a persistent grid of one block per
        // multiprocessor walks them.
        let work = p.max_tiles * n_tiles;
        let work_i = i32::try_from(work).map_err(|_| {
            MoeError::config(
                "tokens per forward",
                format!("{rows} selections need {work} GEMM tiles (more than one launch holds)"),
            )
        })?;
        let cfg = LaunchConfig {
            grid_dim: (work.min(dev.multiprocessors() as usize).max(1) as u32, 1, 1),
            block_dim: (384, 1, 1),
            // The stages, a 1 KB block of mbarriers, the n-split exchange (64 x 128 f32), 1 KB
            // of alignment slack.
            shared_mem_bytes: (STAGES * (128 * 128 + 256 * 128) + 1024 + 64 * 128 * 4 + 1024) as u32,
        };
        // Gated and plain FC1 are separate entry points (each one's epilogue is its own code).
        let which = match (fc1, g.gated != 0) {
            (true, true) => "fc1g",
            (true, false) => "fc1",
            (false, _) => "fc2",
        };
        let name = format!("f8tma_{which}_{}_{}", dt_suffix(self.dtype)?, self.format.suffix());
        let f = self.hopper_kernel(&name, cfg.shared_mem_bytes)?;
        let act = act_args(self.dims.activation);
        let n_tiles_i = n_tiles as i32;
        ffi::launch(dev.stream(), &f, cfg, &loc, |a| {
            a.arg(&g)
                .arg(&w)
                .arg(&act)
                .arg(&q)
                .arg(&ta)
                .arg(&tb)
                .arg(&n_tiles_i)
                .arg(&work_i);
        })
        .map_err(|e| dev_err(&loc, &name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_average_has_a_kernel_and_the_bounds_ascend() {
        for avg in [0, 1, 8, 9, 128, 100_000] {
            assert!(FP8_KERNELS.iter().any(|(b, _)| avg <= *b), "{avg}");
        }
        assert!(FP8_KERNELS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(FP8_KERNELS.last().map(|k| k.0), Some(usize::MAX));
    }

    #[test]
    fn gemv_passes_of_16_only_where_a_second_pass_of_8_misses_the_l2() {
        let l2 = 50 << 20;
        // H100, 132 SMs x 3 resident blocks of the gated FC1 (measured there, see the docs).
        let deepseek_fc1 = 2 * 16 * 7168;
        let qwen3_fc1 = 2 * 16 * 2048;
        assert_eq!(gemv_rows_per_pass(8, 396, deepseek_fc1, l2), 16);
        assert_eq!(gemv_rows_per_pass(8, 396, qwen3_fc1, l2), 8);
        // Few rows per slot: one pass of 8 almost always holds them.
        assert_eq!(gemv_rows_per_pass(GEMV_8_ROWS_UP_TO, 396, deepseek_fc1, l2), 8);
        assert_eq!(gemv_rows_per_pass(1, 396, deepseek_fc1, l2), 8);
        assert_eq!(gemv_rows_per_pass(8, usize::MAX, 1 << 20, l2), 16);
    }

    #[test]
    fn quant_io_has_the_c_layout() {
        // Two (address, f32) pairs, each f32 padded to the next 8-byte field, two addresses.
        assert_eq!(std::mem::size_of::<QuantIo>(), 48);
        assert_eq!(std::mem::offset_of!(QuantIo, out_scales), 16);
        assert_eq!(std::mem::offset_of!(QuantIo, out_codes), 32);
    }
}
