//! [`ExpertSource`]: a [`WeightSource`] that serves the layer's canonical expert names
//! (`{e}.w1.weight` gate `[I, H]`, `{e}.w3.weight` up `[I, H]`, `{e}.w2.weight` down `[H, I]`,
//! optional `.bias`, and the scale tensors of quantized formats by suffix, see
//! [`crate::quant_format`]) from a family's real checkpoint names.
//!
//! Per-expert families are served as borrowed views of the mapping, quantized or not (the
//! real suffixes of DeepSeek FP8 and ModelOpt are the canonical ones). Fused families
//! (GPT-OSS, Llama 4) store all experts in one `[E, in, out]` tensor; serving expert `e`
//! transposes just that expert's slice into an owned `[out, in]` view, so loading never
//! materializes more than one expert's copy at a time. Fused MXFP4 (`*_blocks`/`*_scales`,
//! already `[E, out, ...]`) only needs the gate/up rows of one expert picked out. AWQ's int32
//! packing is repacked into the canonical INT4 bytes one projection at a time.
//!
//! [`ExpertSource::check_complete`] validates every tensor against the format the config
//! declares, from the headers only, so a checkpoint that contradicts its config (bf16 experts
//! in an FP8 config, a missing or misshapen scale) is refused naming the real tensor.

use std::borrow::Cow;

use moe_core::{DType, MoeError, Result, TensorView, WeightSource};

use crate::checkpoint::Checkpoint;
use crate::dequant;
use crate::names::{BlockNames, ExpertLayout};
use crate::quant_format::{AWQ_ORDER, CanonicalTensor, CheckpointQuant, ShapeRule};

/// The canonical projections, as the layer names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Canon {
    /// Gate (`w1`), `[I, H]`.
    Gate,
    /// Up (`w3`), `[I, H]`.
    Up,
    /// Down (`w2`), `[H, I]`.
    Down,
}

const PROJS: [(&str, Canon); 3] = [("w1", Canon::Gate), ("w3", Canon::Up), ("w2", Canon::Down)];

/// Splits `"{e}.{w1|w2|w3}.{suffix}"`.
fn parse_canonical(name: &str) -> Option<(usize, Canon, &str)> {
    let mut it = name.splitn(3, '.');
    let e = it.next()?.parse().ok()?;
    let p = match it.next()? {
        "w1" => Canon::Gate,
        "w3" => Canon::Up,
        "w2" => Canon::Down,
        _ => return None,
    };
    Some((e, p, it.next()?))
}

/// Expert weights of one layer, by canonical name.
pub struct ExpertSource<'c> {
    ckpt: &'c Checkpoint,
    prefix: String,
    layout: ExpertLayout,
    num_experts: usize,
    hidden: usize,
    inter: usize,
    /// Convert float weights and biases to this dtype (the block's compute dtype).
    cast: Option<DType>,
    /// How the experts are stored.
    quant: CheckpointQuant,
    /// Serve quantized weights decoded to float (and no scales).
    dequantize: bool,
}

impl std::fmt::Debug for ExpertSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertSource")
            .field("dir", &self.ckpt.dir())
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
            .field("quant", &self.quant)
            .field("dequantize", &self.dequantize)
            .finish()
    }
}

impl<'c> ExpertSource<'c> {
    /// The experts of the block named by `names`, with `num_experts` experts of hidden size
    /// `hidden` and intermediate size `inter` (used to check shapes, naming the real tensor).
    pub fn new(ckpt: &'c Checkpoint, names: &BlockNames, num_experts: usize, hidden: usize, inter: usize) -> Self {
        ExpertSource {
            ckpt,
            prefix: names.prefix.clone(),
            layout: names.experts,
            num_experts,
            hidden,
            inter,
            cast: None,
            quant: CheckpointQuant::None,
            dequantize: false,
        }
    }

    /// Serves float weights converted to `dtype` (for running a checkpoint in another dtype).
    pub fn with_cast(mut self, dtype: Option<DType>) -> Self {
        self.cast = dtype;
        self
    }

    /// Declares the checkpoint's quantized format (from its `quantization_config`).
    pub fn with_quant(mut self, quant: CheckpointQuant) -> Self {
        self.quant = quant;
        self
    }

    /// Serves quantized weights decoded to float (the cast dtype, f32 without one) and no
    /// scale tensors, so an unquantized layer can load them.
    pub fn with_dequantize(mut self, dequantize: bool) -> Self {
        self.dequantize = dequantize;
        self
    }

    /// The format the experts are stored in.
    pub fn quant(&self) -> CheckpointQuant {
        self.quant
    }

    fn dims(&self, p: Canon) -> (usize, usize) {
        match p {
            Canon::Down => (self.hidden, self.inter),
            _ => (self.inter, self.hidden),
        }
    }

    fn is_fused_mxfp4(&self) -> bool {
        self.is_fused() && self.quant == CheckpointQuant::Mxfp4
    }

    fn is_fused(&self) -> bool {
        matches!(self.layout, ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves)
    }

    /// The real checkpoint name behind a canonical name (the fused tensor for fused families;
    /// AWQ's `qweight`/`scales`/`qzeros` for its converted tensors).
    pub fn real_name(&self, canonical: &str) -> Option<String> {
        let (e, p, suffix) = parse_canonical(canonical)?;
        Some(match self.layout {
            ExpertLayout::PerExpert { gate, up, down } => {
                let proj = match p {
                    Canon::Gate => gate,
                    Canon::Up => up,
                    Canon::Down => down,
                };
                let suffix = match (self.quant, suffix) {
                    (CheckpointQuant::Int4Awq { .. }, "weight") => "qweight",
                    (CheckpointQuant::Int4Awq { .. }, "weight_scale") => "scales",
                    (CheckpointQuant::Int4Awq { .. }, "weight_zero") => "qzeros",
                    (_, s) => s,
                };
                format!("{}experts.{e}.{proj}.{suffix}", self.prefix)
            }
            ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves => {
                let base = if p == Canon::Down { "down_proj" } else { "gate_up_proj" };
                let mx = self.quant == CheckpointQuant::Mxfp4;
                match suffix {
                    "weight" if mx => format!("{}experts.{base}_blocks", self.prefix),
                    "weight_scale" if mx => format!("{}experts.{base}_scales", self.prefix),
                    "weight" => format!("{}experts.{base}", self.prefix),
                    "bias" => format!("{}experts.{base}_bias", self.prefix),
                    other => format!("{}experts.{base}_{other}", self.prefix),
                }
            }
        })
    }

    /// Checks one real tensor's presence, dtype and shape from the header.
    fn check_tensor(&self, real: &str, dtypes: &[DType], shape: &ShapeRule) -> Result<()> {
        let Some((dtype, s)) = self.ckpt.info(real) else {
            if self.ckpt.contains(real) {
                return Err(MoeError::BadCheckpoint {
                    path: self
                        .ckpt
                        .file_of(real)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    detail: format!("tensor `{real}` has an unsupported dtype"),
                });
            }
            return Err(MoeError::MissingTensor {
                name: self.missing_detail(real),
            });
        };
        if !dtypes.contains(&dtype) {
            let declared = match self.quant {
                CheckpointQuant::None => "config.json declares no quantization_config".to_string(),
                q => format!("config.json declares {} experts", q.name()),
            };
            return Err(MoeError::DTypeMismatch {
                what: format!("{real} ({declared})"),
                expected: dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" or "),
                actual: dtype.to_string(),
            });
        }
        if !shape.matches(s) {
            return Err(MoeError::shape(real, shape.describe(), s));
        }
        Ok(())
    }

    /// The name of a missing tensor, with a hint when the checkpoint holds the experts in
    /// another format than the config declares (e.g. unquantized `gate_up_proj` where an
    /// MXFP4 config expects `gate_up_proj_blocks`).
    fn missing_detail(&self, real: &str) -> String {
        let float_twin = real
            .strip_suffix("_blocks")
            .map(str::to_string)
            .or_else(|| real.strip_suffix(".qweight").map(|b| format!("{b}.weight")));
        let quant_twin = [format!("{real}_blocks"), real.replace(".weight", ".qweight")];
        match float_twin {
            Some(t) if self.ckpt.contains(&t) => format!(
                "{real} (config.json declares {} experts, but the checkpoint has `{t}` instead)",
                self.quant.name()
            ),
            _ => match quant_twin.iter().find(|t| t.as_str() != real && self.ckpt.contains(t)) {
                Some(t) => format!(
                    "{real} (config.json declares {} experts, but the checkpoint has quantized `{t}` instead)",
                    self.quant.name()
                ),
                None => real.to_string(),
            },
        }
    }

    /// Checks, from the headers only, that every expert tensor the layer will ask for exists
    /// with the dtype and shape of the declared format, so a broken checkpoint is reported with
    /// the real tensor name before any weight is copied.
    pub fn check_complete(&self, bias: bool) -> Result<()> {
        let (e_n, h, i) = (self.num_experts, self.hidden, self.inter);
        let floats: &[DType] = &[DType::F32, DType::BF16, DType::F16];
        let specs = |out: usize, inp: usize, real: &str| -> Result<Vec<CanonicalTensor>> {
            let r = match self.quant {
                CheckpointQuant::Int4Awq { group } => CheckpointQuant::awq_tensors(group, out, inp),
                q => q.canonical_tensors(out, inp),
            };
            r.map_err(|detail| MoeError::shape(real, detail, &[out, inp]))
        };
        if !self.is_fused() {
            for e in 0..e_n {
                for (w, p) in PROJS {
                    let (out, inp) = self.dims(p);
                    let weight = self.real_name(&format!("{e}.{w}.weight")).unwrap_or_default();
                    for t in specs(out, inp, &weight)? {
                        // AWQ specs carry the real suffixes; the others are canonical = real.
                        let real = match self.quant {
                            CheckpointQuant::Int4Awq { .. } => self
                                .real_name(&format!("{e}.{w}.weight"))
                                .map(|r| format!("{}{}", r.strip_suffix("qweight").unwrap_or(&r), t.suffix)),
                            _ => self.real_name(&format!("{e}.{w}.{}", t.suffix)),
                        }
                        .unwrap_or_default();
                        self.check_tensor(&real, t.dtypes, &t.shape)?;
                    }
                    if bias {
                        let real = self.real_name(&format!("{e}.{w}.bias")).unwrap_or_default();
                        self.check_tensor(&real, floats, &ShapeRule::Exact(vec![out]))?;
                    }
                }
            }
            return Ok(());
        }
        let p = &self.prefix;
        match self.quant {
            CheckpointQuant::None => {
                self.check_tensor(
                    &format!("{p}experts.gate_up_proj"),
                    floats,
                    &ShapeRule::Exact(vec![e_n, h, 2 * i]),
                )?;
                self.check_tensor(
                    &format!("{p}experts.down_proj"),
                    floats,
                    &ShapeRule::Exact(vec![e_n, i, h]),
                )?;
            }
            CheckpointQuant::Mxfp4 => {
                for (base, out, inp) in [("gate_up_proj", 2 * i, h), ("down_proj", h, i)] {
                    let blocks = format!("{p}experts.{base}_blocks");
                    if inp % 32 != 0 {
                        return Err(MoeError::shape(
                            &blocks,
                            format!("MXFP4 needs the input dimension to be a multiple of 32, got {inp}"),
                            &[e_n, out, inp],
                        ));
                    }
                    self.check_tensor(&blocks, &[DType::U8], &ShapeRule::Exact(vec![e_n, out, inp / 32, 16]))?;
                    self.check_tensor(
                        &format!("{p}experts.{base}_scales"),
                        &[DType::U8, DType::E8M0],
                        &ShapeRule::Exact(vec![e_n, out, inp / 32]),
                    )?;
                }
            }
            q => {
                return Err(MoeError::UnsupportedModel {
                    detail: format!(
                        "{} experts in the fused `{p}experts.gate_up_proj` layout are not supported \
                         (fused experts load unquantized or MXFP4 `_blocks`/`_scales`; per-expert \
                         `experts.{{e}}.gate_proj` names load in every format)",
                        q.name()
                    ),
                });
            }
        }
        if bias {
            self.check_tensor(
                &format!("{p}experts.gate_up_proj_bias"),
                floats,
                &ShapeRule::Exact(vec![e_n, 2 * i]),
            )?;
            self.check_tensor(
                &format!("{p}experts.down_proj_bias"),
                floats,
                &ShapeRule::Exact(vec![e_n, h]),
            )?;
        }
        Ok(())
    }

    /// Bytes of every on-disk tensor holding this layer's routed experts (weights, scales,
    /// biases), for comparing a loaded layer's resident size with its packed size.
    pub fn disk_bytes(&self) -> usize {
        let experts = format!("{}experts.", self.prefix);
        self.ckpt
            .names()
            .filter(|n| n.starts_with(&experts))
            .filter_map(|n| self.ckpt.info(n))
            .map(|(d, s)| s.iter().product::<usize>() * d.size_in_bytes())
            .sum()
    }

    fn lookup(&self, name: &str) -> Result<Option<TensorView<'c>>> {
        let Some((e, p, suffix)) = parse_canonical(name) else {
            return Ok(None);
        };
        if e >= self.num_experts {
            return Ok(None);
        }
        if self.dequantize && self.quant != CheckpointQuant::None && suffix != "bias" {
            if suffix != "weight" {
                return Ok(None);
            }
            let (out, inp) = self.dims(p);
            let what = self.real_name(name).unwrap_or_else(|| name.to_string());
            let w = dequant::dequantize(self.quant, &what, out, inp, |s| {
                let canon = format!("{e}.{}.{s}", name.split('.').nth(1).unwrap_or("?"));
                self.lookup_stored(e, p, s)?.ok_or_else(|| MoeError::MissingTensor {
                    name: self.real_name(&canon).unwrap_or(canon),
                })
            })?;
            let data: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            return Ok(Some(TensorView {
                dtype: DType::F32,
                shape: vec![out, inp],
                data: Cow::Owned(data),
            }));
        }
        self.lookup_stored(e, p, suffix)
    }

    /// The canonical tensor `suffix` of expert `e`'s projection `p`, as stored (quantized).
    fn lookup_stored(&self, e: usize, p: Canon, suffix: &str) -> Result<Option<TensorView<'c>>> {
        let canon = format!(
            "{e}.{}.{suffix}",
            PROJS.iter().find(|(_, c)| *c == p).map_or("?", |(w, _)| w)
        );
        if let (CheckpointQuant::Int4Awq { group }, false, false) = (self.quant, self.is_fused(), suffix == "bias") {
            return self.lookup_awq(&canon, p, suffix, group);
        }
        let Some(real) = self.real_name(&canon) else {
            return Ok(None);
        };
        let Some(view) = self.ckpt.get(&real)? else {
            return Ok(None);
        };
        let (h, i) = (self.hidden, self.inter);
        if !self.is_fused() {
            // Float weights and biases have the logical shape; packed/scale tensors were
            // checked by `check_complete` against the format, and again by the quant method.
            if view.dtype.is_float_activation() && matches!(suffix, "weight" | "bias") {
                let (out, inp) = self.dims(p);
                let expected: Vec<usize> = if suffix == "weight" { vec![out, inp] } else { vec![out] };
                view.expect_shape(&real, &expected)?;
            }
            return Ok(Some(relabel_e8m0(view)));
        }
        let interleaved = self.layout == ExpertLayout::FusedInterleaved;
        let e_n = self.num_experts;
        match (suffix, p) {
            ("bias", Canon::Down) => {
                view.expect_shape(&real, &[e_n, h])?;
                let slab = expert_slab(&view, e);
                Ok(Some(TensorView {
                    dtype: view.dtype,
                    shape: vec![h],
                    data: slab,
                }))
            }
            ("bias", _) => {
                view.expect_shape(&real, &[e_n, 2 * i])?;
                let slab = expert_slab(&view, e);
                Ok(Some(pick_rows(
                    &view,
                    &slab,
                    1,
                    i,
                    |c| column_of(p, interleaved, c, i),
                    vec![i],
                )))
            }
            ("weight" | "weight_scale", _) if self.is_fused_mxfp4() => {
                // `_blocks` [E, out, in/32, 16] and `_scales` [E, out, in/32] are already
                // [out, in]-major: pick the expert's rows (gate/up from the shared gate_up rows).
                let (out_all, inp) = if p == Canon::Down { (h, i) } else { (2 * i, h) };
                let groups = inp / 32;
                let (row_len, shape_all) = if suffix == "weight" {
                    (groups * 16, vec![e_n, out_all, groups, 16])
                } else {
                    (groups, vec![e_n, out_all, groups])
                };
                view.expect_shape(&real, &shape_all)?;
                let slab = expert_slab(&view, e);
                let (out, _) = self.dims(p);
                let shape = vec![out, row_len];
                let v = if p == Canon::Down {
                    TensorView {
                        dtype: view.dtype,
                        shape,
                        data: slab,
                    }
                } else {
                    pick_rows(&view, &slab, row_len, out, |c| column_of(p, interleaved, c, i), shape)
                };
                Ok(Some(relabel_e8m0(v)))
            }
            ("weight", Canon::Down) if self.quant == CheckpointQuant::None => {
                // down_proj [E, I, H] (in × out) -> w2 [H, I].
                view.expect_shape(&real, &[e_n, i, h])?;
                let slab = expert_slab(&view, e);
                Ok(Some(transpose(&view, slab, i, h, |c| c, h)))
            }
            ("weight", _) if self.quant == CheckpointQuant::None => {
                // gate_up_proj [E, H, 2I] (in × out) -> w1/w3 [I, H].
                view.expect_shape(&real, &[e_n, h, 2 * i])?;
                let slab = expert_slab(&view, e);
                let col = |c: usize| column_of(p, interleaved, c, i);
                Ok(Some(transpose(&view, slab, h, i, col, 2 * i)))
            }
            _ => Err(MoeError::UnsupportedModel {
                detail: format!(
                    "`{real}`: {} fused expert tensors with suffix `{suffix}` are not mapped",
                    self.quant.name()
                ),
            }),
        }
    }

    /// AWQ: `qweight` i32 `[in, out/8]`, `qzeros` i32 `[in/g, out/8]`, `scales` `[in/g, out]`
    /// -> canonical `weight` u8 `[out, in/2]`, `weight_zero` u8 `[out, in/g]`,
    /// `weight_scale` `[out, in/g]` (the scales' own dtype).
    fn lookup_awq(&self, canon: &str, p: Canon, suffix: &str, group: usize) -> Result<Option<TensorView<'c>>> {
        let (out, inp) = self.dims(p);
        let real = self.real_name(canon).unwrap_or_default();
        let specs =
            CheckpointQuant::awq_tensors(group, out, inp).map_err(|d| MoeError::shape(&real, d, &[out, inp]))?;
        let spec = |s: &str| specs.iter().find(|t| t.suffix == s).cloned();
        let Some(t) = spec(match suffix {
            "weight" => "qweight",
            "weight_scale" => "scales",
            "weight_zero" => "qzeros",
            _ => return Ok(None),
        }) else {
            return Ok(None);
        };
        let Some(view) = self.ckpt.get(&real)? else {
            return Ok(None);
        };
        if !t.dtypes.contains(&view.dtype) {
            return Err(MoeError::DTypeMismatch {
                what: real,
                expected: t.dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" or "),
                actual: view.dtype.to_string(),
            });
        }
        if !t.shape.matches(&view.shape) {
            return Err(MoeError::shape(&real, t.shape.describe(), &view.shape));
        }
        let rows = view.shape[0];
        Ok(Some(match suffix {
            "weight_scale" => {
                let es = view.dtype.size_in_bytes();
                let mut data = vec![0u8; view.data.len()];
                for g in 0..rows {
                    for n in 0..out {
                        let s = (g * out + n) * es;
                        let d = (n * rows + g) * es;
                        data[d..d + es].copy_from_slice(&view.data[s..s + es]);
                    }
                }
                TensorView {
                    dtype: view.dtype,
                    shape: vec![out, rows],
                    data: Cow::Owned(data),
                }
            }
            _ => {
                // Unpack the nibble of column n from word n/8 at AWQ's position for n % 8.
                let mut pos = [0usize; 8];
                for (i, &col) in AWQ_ORDER.iter().enumerate() {
                    pos[col] = i;
                }
                let words = out / 8;
                let code = |k: usize, n: usize| -> u8 {
                    let w = (k * words + n / 8) * 4;
                    let word = u32::from_le_bytes([view.data[w], view.data[w + 1], view.data[w + 2], view.data[w + 3]]);
                    ((word >> (4 * pos[n % 8])) & 0xF) as u8
                };
                if suffix == "weight_zero" {
                    let data = (0..out)
                        .flat_map(|n| (0..rows).map(move |g| (n, g)))
                        .map(|(n, g)| code(g, n))
                        .collect();
                    TensorView {
                        dtype: DType::U8,
                        shape: vec![out, rows],
                        data: Cow::Owned(data),
                    }
                } else {
                    let mut data = vec![0u8; out * inp / 2];
                    for n in 0..out {
                        for k in 0..inp {
                            data[n * (inp / 2) + k / 2] |= code(k, n) << (4 * (k % 2));
                        }
                    }
                    TensorView {
                        dtype: DType::U8,
                        shape: vec![out, inp / 2],
                        data: Cow::Owned(data),
                    }
                }
            }
        }))
    }

    fn convert(&self, name: &str, view: TensorView<'c>) -> Result<TensorView<'c>> {
        // Only weights and biases follow the block dtype; scales keep their checkpoint dtype
        // (an f32 `weight_scale_inv` rounded to bf16 would shift every block by up to 0.4%).
        let is_value = name.ends_with(".weight") || name.ends_with(".bias");
        match self.cast {
            Some(to)
                if is_value && view.dtype != to && view.dtype.is_float_activation() && to.is_float_activation() =>
            {
                let t = view.to_f32_vec(name)?;
                let converted = moe_core::Tensor::from_f32_as(to, view.shape.clone(), &t)?;
                let data = converted.view()?.data.into_owned();
                Ok(TensorView {
                    dtype: to,
                    shape: view.shape,
                    data: Cow::Owned(data),
                })
            }
            _ => Ok(view),
        }
    }
}

/// UE8M0 scales stored as torch's `float8_e8m0fnu` are served as the `u8` the contract names
/// (same bytes).
fn relabel_e8m0(mut v: TensorView<'_>) -> TensorView<'_> {
    if v.dtype == DType::E8M0 {
        v.dtype = DType::U8;
    }
    v
}

/// Output column of fused `gate_up` holding channel `c` of projection `p`.
fn column_of(p: Canon, interleaved: bool, c: usize, inter: usize) -> usize {
    match (interleaved, p) {
        (true, Canon::Up) => 2 * c + 1,
        (true, _) => 2 * c,
        (false, Canon::Up) => inter + c,
        (false, _) => c,
    }
}

/// Bytes of expert `e` of a `[E, ...]` tensor whose shape was checked.
fn expert_slab<'a>(view: &TensorView<'a>, e: usize) -> Cow<'a, [u8]> {
    let per = view.data.len() / view.shape.first().copied().unwrap_or(1).max(1);
    match &view.data {
        Cow::Borrowed(b) => {
            let b: &'a [u8] = b;
            Cow::Borrowed(&b[e * per..(e + 1) * per])
        }
        Cow::Owned(v) => Cow::Owned(v[e * per..(e + 1) * per].to_vec()),
    }
}

/// Rows `row(0..n)` of a slab of rows of `row_len` elements, as a new `[n, row_len]`-sized
/// tensor of `shape`.
fn pick_rows<'a>(
    view: &TensorView<'_>,
    slab: &[u8],
    row_len: usize,
    n: usize,
    row: impl Fn(usize) -> usize,
    shape: Vec<usize>,
) -> TensorView<'a> {
    let bytes = row_len * view.dtype.size_in_bytes();
    let mut out = Vec::with_capacity(n * bytes);
    for c in 0..n {
        let s = row(c) * bytes;
        out.extend_from_slice(&slab[s..s + bytes]);
    }
    TensorView {
        dtype: view.dtype,
        shape,
        data: Cow::Owned(out),
    }
}

/// From a row-major `[rows, stride]` slab (element bytes of `view.dtype`), builds the
/// `[cols, rows]` tensor `out[c][r] = slab[r][col(c)]`: the transpose of selected columns.
fn transpose<'a>(
    view: &TensorView<'_>,
    slab: Cow<'_, [u8]>,
    rows: usize,
    cols: usize,
    col: impl Fn(usize) -> usize,
    stride: usize,
) -> TensorView<'a> {
    let es = view.dtype.size_in_bytes();
    let mut out = vec![0u8; rows * cols * es];
    for c in 0..cols {
        let src_c = col(c);
        for r in 0..rows {
            let s = (r * stride + src_c) * es;
            let d = (c * rows + r) * es;
            out[d..d + es].copy_from_slice(&slab[s..s + es]);
        }
    }
    TensorView {
        dtype: view.dtype,
        shape: vec![cols, rows],
        data: Cow::Owned(out),
    }
}

impl WeightSource for ExpertSource<'_> {
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        match self.lookup(name)? {
            Some(v) => self.convert(name, v).map(Some),
            None => Ok(None),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut suffixes: Vec<&str> = match (self.dequantize, self.quant.canonical_tensors(0, 0)) {
            (false, Ok(t)) => t.iter().map(|t| t.suffix).collect(),
            _ => vec!["weight"],
        };
        suffixes.push("bias");
        let mut out = Vec::new();
        for e in 0..self.num_experts {
            for (w, _) in PROJS {
                for suffix in &suffixes {
                    let n = format!("{e}.{w}.{suffix}");
                    if self.real_name(&n).is_some_and(|r| self.ckpt.contains(&r)) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} experts under `{}`)",
            self.ckpt.dir().display(),
            self.quant.name(),
            self.prefix
        )
    }
}
