//! What a quantization format declares so the shared engine ([`crate::engine`]) can run its
//! lifecycle: the checkpoint tensors of each projection and where they land per slot
//! ([`TensorSpec`]), the per-expert scale folding ([`Format::finish_slot`]), the layer-wide
//! folding, activation quantization and the kernel view of one slot.
//!
//! Every method of this crate (unquantized included) is a [`Format`]; loading, TP sharding,
//! staging, registration and view plumbing are written once, in the engine.

use std::borrow::Cow;

use moe_core::weights::Proj;
use moe_core::{
    DType, EplbSupportStatus, ExpertTensorRegistration, ExpertWeights, LayerLayout, MoeError, QuantAlgo,
    QuantizedInput, Result, Tensor,
};
use moe_kernels::cpu::act_quant::ActQuant;
use moe_kernels::cpu::weight_slice::WeightSlice;

/// Float dtypes a scale or bias may be stored in (decoded exactly to f32).
pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::BF16, DType::F16];
/// Byte dtypes packed 4-bit codes may be stored as.
pub(crate) const PACKED_FP4: &[DType] = &[DType::U8, DType::Fp4E2M1x2];

/// The GEMM a per-slot tensor feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fc {
    /// Fused `[w3 ; w1]`, `[expand * I_pp, H]`.
    Fc1,
    /// `w2`, `[H, I_pp]`.
    Fc2,
}

impl Fc {
    pub fn of(proj: Proj) -> Fc {
        match proj {
            Proj::W1 | Proj::W3 => Fc::Fc1,
            Proj::W2 => Fc::Fc2,
        }
    }

    /// Per-slot tensor name, `w3_w1_{suffix}` or `w2_{suffix}`. The suffixes the kernel views
    /// read on every forward (`expert_view`) are static names, so building a view allocates
    /// nothing; any other suffix is formatted.
    pub fn tensor(self, suffix: &str) -> Cow<'static, str> {
        macro_rules! known {
            ($($s:literal),*) => {
                match (self, suffix) {
                    $((Fc::Fc1, $s) => return Cow::Borrowed(concat!("w3_w1_", $s)),)*
                    $((Fc::Fc2, $s) => return Cow::Borrowed(concat!("w2_", $s)),)*
                    _ => {}
                }
            };
        }
        known!("weight", "weight_scale", "weight_scale_2", "weight_zero", "bias");
        Cow::Owned(match self {
            Fc::Fc1 => format!("w3_w1_{suffix}"),
            Fc::Fc2 => format!("w2_{suffix}"),
        })
    }

    /// The GEMM operand `[rows, cols]` on this rank.
    pub fn dims(self, layout: &LayerLayout) -> (usize, usize) {
        match self {
            Fc::Fc1 => (layout.fc1_rows(), layout.hidden_size),
            Fc::Fc2 => (layout.hidden_size, layout.intermediate_per_partition),
        }
    }
}

/// How a checkpoint tensor relates to its projection's weight `[out, in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Geometry {
    /// `[ceil(out / rows), ceil(in / cols)]`: one entry per `rows x cols` block (codes are
    /// `1 x 1`, packed 4-bit codes `1 x 2`, NVFP4 scales `1 x 16`, FP8 block scales
    /// `128 x 128`). With `exact`, the block must divide the weight (every format but FP8
    /// block scales, which allow partial edge blocks). Sharded with the weight, in blocks.
    Matrix { rows: usize, cols: usize, exact: bool },
    /// `[out]`: one entry per output channel (INT8 scales, biases).
    PerRow,
    /// `[]` or `[1]`: one value for the projection, handed to [`Format::finish_slot`].
    Scalar,
}

impl Geometry {
    /// `rows x cols` blocks that divide the weight (`1 x 1`: one code per weight).
    pub const fn exact(rows: usize, cols: usize) -> Geometry {
        Geometry::Matrix {
            rows,
            cols,
            exact: true,
        }
    }

    /// Checkpoint shape for a weight `[out, in]` (`Scalar` also accepts `[1]`).
    pub fn shape(self, out: usize, inp: usize) -> Vec<usize> {
        match self {
            Geometry::Matrix { rows, cols, .. } => vec![out.div_ceil(rows), inp.div_ceil(cols)],
            Geometry::PerRow => vec![out],
            Geometry::Scalar => vec![],
        }
    }
}

/// Dtype of a per-slot tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotDType {
    /// The layer's activation dtype (unquantized weights and biases).
    Layer,
    Is(DType),
}

/// Where a checkpoint tensor lands: per-slot tensor `{fc}_{suffix}` of `dtype`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotTensor {
    pub suffix: &'static str,
    pub dtype: SlotDType,
}

/// One checkpoint tensor of every projection, `{e}.{w1|w2|w3}.{suffix}`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TensorSpec {
    pub suffix: &'static str,
    /// Dtypes the checkpoint may store it in; anything else is a dtype error naming the
    /// tensor (a bf16 `weight` in an FP8 layer is a checkpoint of mixed formats).
    pub accepted: &'static [DType],
    pub geometry: Geometry,
    /// `None` for scalars, which the format folds in [`Format::finish_slot`].
    pub slot: Option<SlotTensor>,
    /// Loaded on TP rank 0 only and zero elsewhere (the FC2 bias: the ranks' partial outputs
    /// are summed, so it must be added once). Only meaningful for FC2 per-row tensors.
    pub once_across_tp: bool,
}

impl TensorSpec {
    /// A tensor stored per slot under `{fc}_{slot_suffix}`.
    pub const fn slotted(
        suffix: &'static str,
        accepted: &'static [DType],
        geometry: Geometry,
        slot_suffix: &'static str,
        dtype: SlotDType,
    ) -> Self {
        TensorSpec {
            suffix,
            accepted,
            geometry,
            slot: Some(SlotTensor {
                suffix: slot_suffix,
                dtype,
            }),
            once_across_tp: false,
        }
    }

    /// A per-projection scalar (`[]` or `[1]`) in a float dtype.
    pub const fn scalar(suffix: &'static str) -> Self {
        TensorSpec {
            suffix,
            accepted: FLOATS,
            geometry: Geometry::Scalar,
            slot: None,
            once_across_tp: false,
        }
    }
}

/// How the FC1 input scales of w1 and w3 of one expert combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fc31InputScale {
    /// The larger one (FP8 per-tensor).
    Max,
    /// They must agree (allclose), else the checkpoint is refused (NVFP4: FC1's halves share
    /// one activation quantization).
    Agree,
}

/// A layer tensor (not per slot): full shape, all f32, initial value.
#[derive(Clone, Debug)]
pub(crate) struct LayerTensor {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub fill: f32,
}

impl LayerTensor {
    /// One f32 scalar per name, 0 until the format sets it.
    pub fn scalars(names: &[&'static str]) -> Vec<LayerTensor> {
        names
            .iter()
            .map(|&name| LayerTensor {
                name,
                shape: vec![1],
                fill: 0.0,
            })
            .collect()
    }
}

/// Scalars read for one expert, by projection and suffix.
#[derive(Debug, Default)]
pub(crate) struct Scalars(pub Vec<(Proj, &'static str, f32)>);

impl Scalars {
    /// The scalar `{expert}.{proj}.{suffix}` (loaded before `finish_slot` is called).
    pub fn get(&self, expert: usize, proj: Proj, suffix: &str) -> Result<f32> {
        self.0
            .iter()
            .find(|(p, s, _)| *p == proj && *s == suffix)
            .map(|&(_, _, v)| v)
            .ok_or_else(|| MoeError::MissingTensor {
                name: moe_core::weights::expert_tensor_name(expert, proj, suffix),
            })
    }
}

/// One slot's tensors before they are committed, by per-slot tensor name.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    pub tensors: Vec<(String, Staged)>,
}

/// Staged data of one per-slot tensor.
#[derive(Debug)]
pub(crate) enum Staged {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
}

impl Staging {
    fn find(&mut self, name: &str) -> Result<&mut Staged> {
        self.tensors
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .ok_or_else(|| MoeError::lifecycle(format!("per-slot tensor `{name}` is not staged")))
    }

    /// The staged f32 values of `name`.
    pub fn f32_mut(&mut self, name: &str) -> Result<&mut [f32]> {
        match self.find(name)? {
            Staged::F32(v) => Ok(v),
            Staged::Bytes(_) => Err(MoeError::lifecycle(format!(
                "per-slot tensor `{name}` is staged as bytes"
            ))),
        }
    }

    /// The staged bytes of `name`.
    pub fn bytes_mut(&mut self, name: &str) -> Result<&mut [u8]> {
        match self.find(name)? {
            Staged::Bytes(v) => Ok(v),
            Staged::F32(_) => Err(MoeError::lifecycle(format!(
                "per-slot tensor `{name}` is staged as f32"
            ))),
        }
    }
}

/// A quantization format (see the module docs). Methods with defaults are the common case of
/// a format that folds nothing.
pub(crate) trait Format: Send + Sync {
    fn algo(&self) -> QuantAlgo;

    /// The method's name: its descriptor's `method` (`moe_core::quant_format`; the
    /// descriptor's `name` is the format's, `QuantAlgo::as_str`).
    fn name(&self) -> &'static str {
        let d = self.algo().descriptor();
        d.method
    }

    /// Whether EPLB may migrate its slots: its descriptor's.
    fn eplb_support_status(&self) -> EplbSupportStatus {
        self.algo().descriptor().eplb
    }

    /// Checkpoint tensors of each projection; biases are added by the engine.
    fn specs(&self) -> Vec<TensorSpec>;

    /// Dtype the per-slot biases are kept in.
    fn bias_dtype(&self) -> SlotDType {
        SlotDType::Is(DType::F32)
    }

    /// Constraints of the format on the layout beyond block alignment, which the engine checks
    /// from the specs.
    fn check_layout(&self, _layout: &LayerLayout) -> Result<()> {
        Ok(())
    }

    /// Per-slot tensors the format computes rather than copies (folded scales).
    fn derived_slot_tensors(&self, _layout: &LayerLayout) -> Vec<ExpertTensorRegistration> {
        Vec::new()
    }

    /// Layer tensors of the format besides the input-scale tables the engine adds.
    fn layer_tensors(&self, _layout: &LayerLayout) -> Vec<LayerTensor> {
        Vec::new()
    }

    /// `Some` when the format reads the `input_scale` of every expert of the layer.
    fn input_scales(&self) -> Option<Fc31InputScale> {
        None
    }

    /// Folds the scalars of `expert` into its staged slot (requantization, per-slot scales).
    fn finish_slot(
        &self,
        _layout: &LayerLayout,
        _expert: usize,
        _scalars: &Scalars,
        _stage: &mut Staging,
    ) -> Result<()> {
        Ok(())
    }

    /// Layer folding once every slot and input scale is loaded (`process_weights_after_loading`).
    fn fold_layer_scales(&self, _weights: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        Ok(())
    }

    /// Per-slot factors derived from the folded layer scales (`setup_quant_scales`).
    fn setup_quant_scales(&self, _weights: &mut ExpertWeights, _layout: &LayerLayout) -> Result<()> {
        Ok(())
    }

    /// Activation quantization before dispatch (identity by default: `x` borrowed, no copy).
    fn quantize_input<'a>(&self, x: &'a Tensor, _weights: &ExpertWeights) -> Result<QuantizedInput<'a>> {
        Ok(QuantizedInput::borrowed(x))
    }

    /// The GEMM operand `fc` of local slot `slot`.
    fn matrix<'a>(
        &self,
        weights: &'a ExpertWeights,
        layout: &LayerLayout,
        fc: Fc,
        slot: usize,
    ) -> Result<WeightSlice<'a>>;

    /// How the input of GEMM `fc` is quantized.
    fn act_quant(&self, _weights: &ExpertWeights, _fc: Fc) -> Result<ActQuant> {
        Ok(ActQuant::None)
    }
}
