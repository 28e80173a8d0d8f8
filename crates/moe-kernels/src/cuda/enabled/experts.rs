//! The expert computation of one MoE layer on the device (kernels in `kernels/experts/`, one
//! file per stage or GEMM path, compiled as one NVRTC source: [`SRC`]).
//!
//! [`DeviceExperts::upload`] copies a rank's slots once, in the layout the kernels read:
//! slot-major weight matrices in their stored format (float weights in the activation dtype;
//! FP8 and MXFP4 codes packed, with their scales), biases in f32.
//!
//! [`DeviceExperts::forward`] queues, on the device's one stream and with no host
//! synchronisation and no host allocation (so a forward can be captured into a CUDA graph:
//! `CudaDevice::capture`, tested in moe-backends' `cuda::graph`):
//! 1. the permutation ([`permute`]): a histogram of the local slots, its prefix sum (row
//!    offset of each slot, plus the tile list of the tensor-core paths) and the permuted row of
//!    every selection, in one launch where one block holds them;
//! 2. the format's FP8 activation quantize-dequantize of the FC1 input, when it has one (on the
//!    TMA path, `moe_expand` then gathers each slot's input rows into one block);
//! 3. FC1 with bias and activation fused into its epilogue (`act = act(x W13^T + b13)`);
//! 4. the FC2 input quantization, FC2 with bias (`y = act W2^T + b2`);
//! 5. finalize: each token's rows weighted and summed in selection order, in f32.
//!
//! Four GEMM paths, chosen on the host from sizes alone (never from device data):
//! - GEMV: streams each weight row once for up to 8 rows of its slot at a time (decode: at most
//!   one row per slot on average, and every f32 layer);
//! - TMA (Hopper, 16-bit float weights, from [`TMA_MIN_AVG_ROWS`] rows per slot): a
//!   warp-specialized kernel, one producer warpgroup issuing bulk tensor copies into a 4-stage
//!   mbarrier pipeline and two consumer warpgroups each computing 64 x 256 with `wgmma`;
//! - wgmma (Hopper, the other cases: quantized weights, few rows per slot): 64- or 128-row tiles
//!   of 128 columns, a 4-stage `cp.async` pipeline into the 128-byte swizzle, one MMA group in
//!   flight;
//! - elsewhere an `mma.sync` m16n8k16 kernel (3-stage pipeline, 32/64/128-row tiles).
//!
//! Quantized weights are decoded to the activation dtype inside the kernels, a tile at a time;
//! they never exist dequantized in device memory.
//!
//! Files: this one holds the layer and its forward; `experts/weights.rs` the upload,
//! `experts/permute.rs` step 1, `experts/gemm.rs` the GEMM launches of the paths above and the
//! activation QDQ, `experts/fp8.rs` the FP8 x FP8 path.

use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use moe_core::{Activation, DType, MoeError, Result, Tensor};

use super::device::{CudaDevice, WGMMA_DEFINE, dev_err};
use super::ffi;
use super::storage::{CudaStorage, tensor_bytes};
use crate::cpu::act_quant::ActQuant;
use crate::cpu::expert_mlp::{ExpertView, MlpDims};
use fp8::Fp8Path;
use gemm::qdq;
pub use gemm::qdq_device;
use permute::PermuteShape;
use weights::{DeviceMatrix, format_of, format_of_first, upload_bias};

pub(super) mod fp8;
mod gemm;
mod permute;
mod weights;

/// The module's source: its files in dependency order (each may use what the earlier ones
/// define), one NVRTC compilation per variant.
pub(super) const SRC: &str = concat!(
    include_str!("../kernels/experts/formats.cu"),
    include_str!("../kernels/experts/permute.cu"),
    include_str!("../kernels/experts/qdq.cu"),
    include_str!("../kernels/experts/gemv.cu"),
    include_str!("../kernels/experts/mma.cu"),
    include_str!("../kernels/experts/wgmma.cu"),
    include_str!("../kernels/experts/tma.cu"),
    include_str!("../kernels/experts/finalize.cu"),
    include_str!("../kernels/experts/entry.cu"),
    include_str!("../kernels/experts/fp8.cu"),
);
const MODULE: &str = "experts";
/// The variant holding the permutation, quantization and finalize kernels.
const COMMON: &str = "VARIANT_common";

/// Pipeline depth of the wgmma kernels (`WG_STAGES` in `experts/wgmma.cu`).
const WG_STAGES: usize = 4;

/// Average rows per slot up to which the GEMV path runs where there is no wgmma (before Hopper;
/// on Hopper the wgmma kernel takes over from two rows per slot, see `DeviceExperts::path`).
const GEMV_MAX_AVG_ROWS: usize = 8;

/// Arguments shared by both GEMMs (`GemmArgs` in `experts/gemv.cu`; same field order and types).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmArgs {
    pub a: u64,
    pub row_sel: u64,
    pub top_k: i32,
    pub offsets: u64,
    pub tiles: u64,
    pub num_tiles: u64,
    pub out: u64,
    pub bias: u64,
    pub k: i32,
    pub units: i32,
    pub gated: i32,
    pub out_f32: i32,
}

/// One weight matrix of every slot (`WeightArgs` in `experts/formats.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightArgs {
    pub w: u64,
    pub scales: u64,
    pub mx_scales: u64,
    pub tensor_scale: f32,
    pub per_slot: u64,
    pub rows: i32,
    pub cols: i32,
    pub b0: i32,
    pub b1: i32,
    pub b0_log2: i32,
    pub b1_log2: i32,
}

/// The activation (`ActArgs` in `experts/formats.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActArgs {
    pub kind: i32,
    pub alpha: f32,
    pub beta: f32,
    pub limit: f32,
}

/// How the weights of a layer are stored on the device (the kernels' `FMT`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Float,
    Fp8PerTensor,
    Fp8Block { b0: usize, b1: usize },
    Mxfp4,
}

impl Format {
    fn suffix(self) -> &'static str {
        match self {
            Format::Float => "float",
            Format::Fp8PerTensor => "fp8t",
            Format::Fp8Block { .. } => "fp8b",
            Format::Mxfp4 => "mxfp4",
        }
    }
}

pub struct DeviceExperts {
    dev: CudaDevice,
    dtype: DType,
    format: Format,
    dims: MlpDims,
    num_slots: usize,
    w13: DeviceMatrix,
    w2: DeviceMatrix,
    b13: Option<CudaStorage>,
    b2: Option<CudaStorage>,
    fc1_input: ActQuant,
    fc2_input: ActQuant,
    bytes: usize,
    /// Blocks of the FP8 8-row GEMV (FC1, FC2) resident on the device at once, read from the
    /// driver's occupancy calculator at first use (`experts/fp8.rs`: `gemv_rows_per_pass`).
    fp8_gemv_resident: [std::sync::OnceLock<usize>; 2],
}

impl std::fmt::Debug for DeviceExperts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceExperts({}, {} slots, {:?}, {} bytes)",
            self.dev.location(),
            self.num_slots,
            self.format,
            self.bytes
        )
    }
}

fn dt_suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(MoeError::DTypeMismatch {
            what: "CUDA expert activations".into(),
            expected: "f32, bf16 or f16".into(),
            actual: other.to_string(),
        }),
    }
}

fn act_args(a: Activation) -> ActArgs {
    match a {
        Activation::Swiglu => ActArgs {
            kind: 0,
            alpha: 1.0,
            beta: 0.0,
            limit: 0.0,
        },
        Activation::SwigluGptOss { alpha, beta, limit } => ActArgs {
            kind: 1,
            alpha,
            beta,
            limit,
        },
        Activation::Relu2 => ActArgs {
            kind: 2,
            alpha: 0.0,
            beta: 0.0,
            limit: 0.0,
        },
    }
}

fn check_aligned(what: &str, v: usize, to: usize) -> Result<()> {
    if !v.is_multiple_of(to) {
        return Err(MoeError::config(
            what,
            format!("{v} must be a multiple of {to} for the CUDA kernels"),
        ));
    }
    Ok(())
}

/// The GEMM path of one forward.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// One warp per output channel; `one_row`: a forward of one token (no slot has two rows),
    /// run by the `gemv1_*` copies.
    Gemv { one_row: bool },
    /// `mma.sync` tiles (Ampere and Ada).
    Mma { bm: usize },
    /// Warpgroup MMA tiles (Hopper).
    Wgmma { bm: usize },
    /// Hopper, 16-bit float weights, many rows per slot: the warp-specialized TMA kernel
    /// (128-row tiles).
    Tma,
    /// Hopper, FP8 weights with FP8 activations: E4M3 on the tensor cores (`fp8_experts`).
    Fp8(Fp8Path),
}

/// Average rows per slot from which 16-bit float weights take the TMA path on Hopper (below
/// it each slot's 128-row tile would be mostly empty, and the cp.async `wgmma` kernel's 64-row
/// tiles already meet the T = 64 targets).
const TMA_MIN_AVG_ROWS: usize = 32;

/// Pipeline depth of the TMA kernels (`TMA_STAGES` in `experts/tma.cu`); a stage holds A (128
/// rows) and B (`bn` weight rows) of 64 16-bit columns.
const TMA_STAGES: usize = 4;

/// Row tiles the TMA kernels raster together (`moe_scan`'s `group`): a group's blocks fill
/// about one wave of 132 multiprocessors with DeepSeek-V3's 16 gated FC1 column tiles.
const TMA_GROUP_TILES: i32 = 8;

/// Blocks per multiprocessor under which a plain (not gated) TMA GEMM takes 128-column tiles
/// instead of 256: a grid of a few waves loses most of its last one (Mixtral's FC2 at 512
/// tokens: about 12 row tiles x 16 column tiles on 132 multiprocessors).
const TMA_NARROW_BELOW_WAVES: usize = 4;

impl DeviceExperts {
    /// Uploads the local slots `slots` (one [`ExpertView`] each, in local slot order) of a
    /// layer with activations in `dtype`. Every slot must share one format.
    pub fn upload(dev: &CudaDevice, dtype: DType, dims: MlpDims, slots: &[ExpertView<'_>]) -> Result<DeviceExperts> {
        dt_suffix(dtype)?;
        let (h, i) = (dims.hidden, dims.inter);
        check_aligned("hidden_size", h, 8)?;
        check_aligned("intermediate_size (per partition)", i, 8)?;
        let format = slots.first().map_or(Format::Float, |s| format_of(&s.w3_w1));
        match format {
            Format::Float => {}
            Format::Fp8PerTensor | Format::Fp8Block { .. } | Format::Mxfp4 if dtype != DType::F32 => {
                check_aligned("hidden_size", h, if format == Format::Mxfp4 { 32 } else { 16 })?;
                check_aligned(
                    "intermediate_size (per partition)",
                    i,
                    if format == Format::Mxfp4 { 32 } else { 16 },
                )?;
                if let Format::Fp8Block { b0, b1 } = format {
                    check_aligned("FP8 block columns", b1, 8)?;
                    if !b0.is_power_of_two() || !b1.is_power_of_two() {
                        return Err(MoeError::config(
                            "weight_block_size",
                            format!("[{b0}, {b1}]: the CUDA kernels need power-of-two FP8 blocks"),
                        ));
                    }
                }
            }
            _ => {
                return Err(MoeError::DTypeMismatch {
                    what: "CUDA quantized experts".into(),
                    expected: "bf16 or f16 activations".into(),
                    actual: dtype.to_string(),
                });
            }
        }
        let fc1_rows = dims.fc1_rows();
        let w13: Vec<_> = slots.iter().map(|s| s.w3_w1).collect();
        let w2: Vec<_> = slots.iter().map(|s| s.w2).collect();
        let w13 = DeviceMatrix::upload(dev, "w3_w1", &w13, fc1_rows, h, dtype, format)?;
        let w2 = DeviceMatrix::upload(dev, "w2", &w2, h, i, dtype, format_of_first(slots, format))?;
        let b13 = upload_bias(
            dev,
            "w3_w1 bias",
            &slots.iter().map(|s| s.w3_w1_bias).collect::<Vec<_>>(),
            fc1_rows,
        )?;
        let b2 = upload_bias(dev, "w2 bias", &slots.iter().map(|s| s.w2_bias).collect::<Vec<_>>(), h)?;
        let (fc1_input, fc2_input) = slots
            .first()
            .map_or((ActQuant::None, ActQuant::None), |s| (s.fc1_input, s.fc2_input));
        for (what, q) in [("FC1 input", fc1_input), ("FC2 input", fc2_input)] {
            if matches!(q, ActQuant::Nvfp4 { .. }) {
                return Err(MoeError::lifecycle(format!(
                    "{what}: NVFP4 activation quantization has no CUDA kernel"
                )));
            }
        }
        let bytes = w13.bytes()
            + w2.bytes()
            + b13.as_ref().map_or(0, CudaStorage::len_bytes)
            + b2.as_ref().map_or(0, CudaStorage::len_bytes);
        let experts = DeviceExperts {
            dev: dev.clone(),
            dtype,
            format,
            dims,
            num_slots: slots.len(),
            w13,
            w2,
            b13,
            b2,
            fc1_input,
            fc2_input,
            bytes,
            fp8_gemv_resident: Default::default(),
        };
        // Compile the kernels now so the first forward does not pay for NVRTC.
        experts.kernel(COMMON, "moe_count")?;
        let gemv = format!("gemv_fc1_{}_{}", dt_suffix(dtype)?, format.suffix());
        experts.kernel(&experts.variant()?, &gemv)?;
        Ok(experts)
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Device bytes held by the weights, scales and biases.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn path(&self, selections: usize, tokens: usize) -> Path {
        let avg = selections.div_ceil(self.num_slots.max(1));
        if let Some(fp8) = self.fp8_path(avg) {
            return Path::Fp8(fp8);
        }
        // wgmma reads FP8 block scales per 64 columns of K: the blocks must not be finer.
        let wgmma_ok = self.dev.has_wgmma()
            && match self.format {
                Format::Fp8Block { b0, b1 } => b1 % 64 == 0 && b0 % 8 == 0,
                _ => true,
            };
        if self.dtype == DType::F32 || avg <= if wgmma_ok { 1 } else { GEMV_MAX_AVG_ROWS } {
            Path::Gemv { one_row: tokens == 1 }
        } else if wgmma_ok && self.format == Format::Float && avg >= TMA_MIN_AVG_ROWS {
            Path::Tma
        } else if wgmma_ok {
            // The wgmma kernel streams weights near the copy rate from 2 rows per slot on, so
            // only decode (at most one row per slot on average) keeps the GEMV. 128-row tiles
            // only where slots are full enough to fill them: below that, 64-row tiles waste
            // less of the last tile of each slot and leave room for two CTAs per SM.
            Path::Wgmma {
                bm: if avg <= 192 { 64 } else { 128 },
            }
        } else if avg <= 32 {
            Path::Mma { bm: 32 }
        } else if avg <= 64 {
            Path::Mma { bm: 64 }
        } else {
            Path::Mma { bm: 128 }
        }
    }

    /// The experts of the local slots applied to `x [N, H]` (device, the layer's dtype):
    /// `slots [N, k]` i32 global slot ids (`slot_start` is the first local one; others are
    /// skipped), `scales [N, k]` f32 routing weights (`None` = all ones). Returns `[N, H]` in
    /// `out_dtype` (the layer's dtype or f32) on the device. Queues work only: no host sync.
    pub fn forward(
        &self,
        x: &Tensor,
        slots: &Tensor,
        scales: Option<&Tensor>,
        slot_start: usize,
        out_dtype: DType,
    ) -> Result<Tensor> {
        let (h, inter) = (self.dims.hidden, self.dims.inter);
        x.expect_dtype("x", self.dtype)?;
        if x.shape().len() != 2 || x.shape()[1] != h {
            return Err(MoeError::shape("x", format!("[N, {h}]"), x.shape()));
        }
        let n = x.shape()[0];
        slots.expect_dtype("token_selected_slots", DType::I32)?;
        if slots.shape().len() != 2 || slots.shape()[0] != n {
            return Err(MoeError::shape(
                "token_selected_slots",
                format!("[{n}, k]"),
                slots.shape(),
            ));
        }
        let k = slots.shape()[1];
        if let Some(s) = scales {
            s.expect_dtype("token_final_scales", DType::F32)?;
            s.expect_shape("token_final_scales", &[n, k])?;
        }
        // Eight columns per thread with 16-byte loads where every row is 16-byte aligned.
        let (fin, fin_cols) = {
            let (a, b) = (dt_suffix(self.dtype)?, dt_suffix(out_dtype)?);
            if h % 8 == 0 {
                (format!("finalize8_{a}_{b}"), 8)
            } else {
                (format!("finalize_{a}_{b}"), 1)
            }
        };
        if out_dtype != self.dtype && out_dtype != DType::F32 {
            return Err(MoeError::DTypeMismatch {
                what: "CUDA MoE output".into(),
                expected: format!("{} or f32", self.dtype),
                actual: out_dtype.to_string(),
            });
        }
        let dev = &self.dev;
        let loc = dev.location();
        let xs = self.on_device(x, "x")?;
        let ids = self.on_device(slots, "token_selected_slots")?;
        let sc = scales.map(|s| self.on_device(s, "token_final_scales")).transpose()?;
        if n == 0 || k == 0 {
            return dev.zeros(out_dtype, vec![n, h]);
        }
        let nk = n * k;
        let path = self.path(nk, n);
        let bm = match path {
            // One "tile" per non-empty slot: the GEMV grid walks that list.
            Path::Gemv { .. } => 1 << 20,
            Path::Fp8(f) if !f.tma() => 1 << 20,
            Path::Mma { bm } | Path::Wgmma { bm } => bm,
            Path::Tma | Path::Fp8(_) => 128,
        };
        let esize = self.dtype.size_in_bytes();
        // Only the TMA kernels raster in groups.
        let group = if path == Path::Tma || matches!(path, Path::Fp8(f) if f.tma()) {
            TMA_GROUP_TILES
        } else {
            0
        };
        let fp8_in = match path {
            Path::Fp8(f) => Some(self.fp8_input(f, xs, n, nk)?),
            _ => None,
        };

        // 1. permutation (with the FP8 GEMV's input quantization, where one launch holds both)
        let shape = PermuteShape {
            tokens: n,
            top_k: k,
            slot_start,
            bm,
            group,
            counters: fp8_in.as_ref().map_or(0, |i| i.counters),
        };
        let perm = self.permute(ids.ptr(dev), shape, fp8_in.as_ref().and_then(|i| i.prologue.as_ref()))?;
        let (row_sel_p, pos_p) = (perm.row_sel, perm.pos);
        let k_i = k as i32;
        let grid = |total: usize, block: usize| LaunchConfig {
            grid_dim: (total.div_ceil(block).max(1) as u32, 1, 1),
            block_dim: (block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let y = if let Some(input) = fp8_in {
            self.forward_fp8(input, xs, &perm)?
        } else {
            // 2. FC1 input quantization (into a new buffer: the caller's x is left alone)
            let xq;
            let a1 = if self.fc1_input.is_none() {
                xs.ptr(dev)
            } else {
                xq = dev.alloc_storage(n * h * esize)?;
                qdq(dev, self.fc1_input, (xs, self.dtype), (&xq, self.dtype), n, h, None)?;
                xq.ptr(dev)
            };

            // The TMA path reads each slot's FC1 input rows as one block: gather them once.
            let xp;
            let a1 = if path == Path::Tma {
                xp = dev.alloc_storage(nk * h * esize)?;
                let f = self.kernel(COMMON, "moe_expand")?;
                let (xp_p, count_p, chunks) = (xp.ptr(dev), perm.rows, (h * esize / 16) as i32);
                let cfg = LaunchConfig {
                    grid_dim: (nk as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                ffi::launch(dev.stream(), &f, cfg, &loc, |a| {
                    a.arg(&a1)
                        .arg(&row_sel_p)
                        .arg(&k_i)
                        .arg(&count_p)
                        .arg(&chunks)
                        .arg(&xp_p);
                })?;
                xp.ptr(dev)
            } else {
                a1
            };

            // 3. FC1 + activation. With an FP8 FC2 input the activation is written in f32 and
            // quantized from there, as the host kernels do: quantizing bf16-rounded values would
            // move some of them across an E4M3 rounding midpoint.
            let act = dev.alloc_storage(nk * inter * esize)?;
            let act32 = if self.fc2_input.is_none() {
                None
            } else {
                Some(dev.alloc_storage(nk * inter * 4)?)
            };
            let mut fc1 = perm.gemm_args(
                (a1, act32.as_ref().unwrap_or(&act).ptr(dev)),
                self.b13.as_ref().map_or(0, |b| b.ptr(dev)),
                (h, inter),
                self.dims.activation.is_gated(),
            );
            fc1.out_f32 = i32::from(act32.is_some());
            self.gemm(path, true, fc1, self.w13.args(dev, self.format), perm.max_tiles, nk)?;

            // 4. FC2 input quantization (permuted rows only: their count is offsets[S]), FC2
            if let Some(a32) = &act32 {
                let limit = perm.rows;
                qdq(
                    dev,
                    self.fc2_input,
                    (a32, DType::F32),
                    (&act, self.dtype),
                    nk,
                    inter,
                    Some(limit),
                )?;
            }
            let y = dev.alloc_storage(nk * h * esize)?;
            let fc2 = perm.gemm_args(
                (act.ptr(dev), y.ptr(dev)),
                self.b2.as_ref().map_or(0, |b| b.ptr(dev)),
                (inter, h),
                false,
            );
            self.gemm(path, false, fc2, self.w2.args(dev, self.format), perm.max_tiles, nk)?;
            drop((act, act32));
            y
        };

        // 5. finalize
        let out = dev.alloc_storage(tensor_bytes(out_dtype, &[n, h]))?;
        let f = self.kernel(COMMON, &fin)?;
        let (y_p, sc_p, out_p) = (y.ptr(dev), sc.map_or(0, |s| s.ptr(dev)), out.ptr(dev));
        let (n_i, h_i) = (n as i32, h as i32);
        ffi::launch(dev.stream(), &f, grid(n * h / fin_cols, 256), &loc, |a| {
            a.arg(&y_p)
                .arg(&pos_p)
                .arg(&sc_p)
                .arg(&n_i)
                .arg(&k_i)
                .arg(&h_i)
                .arg(&out_p);
        })?;
        // Scratch buffers are freed on the stream after the kernels that read them.
        drop((perm, y));
        Ok(dev.tensor(out_dtype, vec![n, h], out))
    }

    /// `VARIANT_<dtype>_<format>`: the module of this layer's GEMM kernels.
    fn variant(&self) -> Result<String> {
        Ok(format!("VARIANT_{}_{}", dt_suffix(self.dtype)?, self.format.suffix()))
    }

    fn kernel(&self, variant: &str, func: &str) -> Result<cudarc::driver::CudaFunction> {
        self.dev.function_variant(MODULE, SRC, Some(variant), func)
    }

    /// Kernel `func` of this layer's architecture-specific (`WGMMA`, sm_90a) variant, allowed
    /// `shared_mem_bytes` of dynamic shared memory.
    fn hopper_kernel(&self, func: &str, shared_mem_bytes: u32) -> Result<cudarc::driver::CudaFunction> {
        self.kernel_with_smem(&format!("{} {WGMMA_DEFINE}", self.variant()?), func, shared_mem_bytes)
    }

    /// Kernel `func` of `variant`, allowed `shared_mem_bytes` of dynamic shared memory (a
    /// kernel gets more than 48 KB only once its limit is raised).
    fn kernel_with_smem(
        &self,
        variant: &str,
        func: &str,
        shared_mem_bytes: u32,
    ) -> Result<cudarc::driver::CudaFunction> {
        let f = self.kernel(variant, func)?;
        if shared_mem_bytes > 48 * 1024 {
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_mem_bytes as i32,
            )
            .map_err(|e| dev_err(&self.dev.location(), &format!("{func}: shared memory limit"), e))?;
        }
        Ok(f)
    }

    fn on_device<'t>(&self, t: &'t Tensor, what: &str) -> Result<&'t CudaStorage> {
        let s = CudaStorage::of(t, what)?;
        if s.device().ordinal() != self.dev.ordinal() {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: self.dev.location(),
                actual: s.device().location(),
            });
        }
        Ok(s)
    }
}

impl CudaStorage {
    /// The buffer's device address, for kernel argument structs. Buffers are freed on the
    /// device's stream, after every kernel queued before the free, so an address taken here
    /// stays valid for the kernels queued while the storage is alive.
    pub(crate) fn ptr(&self, dev: &CudaDevice) -> u64 {
        let (p, _sync) = self.bytes().device_ptr(dev.stream());
        p
    }

    /// Zero-fills the first `bytes` of the buffer (queued on the stream).
    pub(crate) fn zero_prefix(&mut self, bytes: usize) -> Result<()> {
        let dev = self.device().clone();
        let mut head = self.bytes_mut().slice_mut(0..bytes);
        dev.stream()
            .memset_zeros(&mut head)
            .map_err(|e| dev_err(&dev.location(), "memset", e))
    }

    /// Zero-fills the buffer (queued on the stream).
    pub(crate) fn zero(&mut self) -> Result<()> {
        let dev = self.device().clone();
        dev.stream()
            .memset_zeros(self.bytes_mut())
            .map_err(|e| dev_err(&dev.location(), "memset", e))
    }

    /// Copies host bytes to offset `at` of this buffer.
    pub(crate) fn write_at(&mut self, at: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let dev = self.device().clone();
        let mut to = self.bytes_mut().slice_mut(at..at + data.len());
        dev.stream()
            .memcpy_htod(data, &mut to)
            .map_err(|e| dev_err(&dev.location(), "host-to-device copy", e))
    }

    pub(crate) fn len_bytes(&self) -> usize {
        moe_core::DeviceStorage::len_bytes(self)
    }
}
