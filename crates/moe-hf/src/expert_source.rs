//! [`ExpertSource`]: a [`WeightSource`] that serves the layer's canonical expert names
//! (`{e}.w1.weight` gate `[I, H]`, `{e}.w3.weight` up `[I, H]`, `{e}.w2.weight` down `[H, I]`,
//! optional `.bias`, and scale tensors by suffix) from a family's real checkpoint names.
//!
//! Per-expert families are served as borrowed views of the mapping. Fused families (GPT-OSS,
//! Llama 4) store all experts in one `[E, in, out]` tensor; serving expert `e` transposes
//! just that expert's slice into an owned `[out, in]` view, so loading never materializes
//! more than one expert's copy at a time.

use std::borrow::Cow;

use moe_core::{DType, MoeError, Result, TensorView, WeightSource};

use crate::checkpoint::Checkpoint;
use crate::names::{BlockNames, ExpertLayout};

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
    /// Convert float weights to this dtype (a dtype override of the block).
    cast: Option<DType>,
}

impl std::fmt::Debug for ExpertSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertSource")
            .field("dir", &self.ckpt.dir())
            .field("prefix", &self.prefix)
            .field("layout", &self.layout)
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
        }
    }

    /// Serves float weights converted to `dtype` (for running a checkpoint in another dtype).
    pub fn with_cast(mut self, dtype: Option<DType>) -> Self {
        self.cast = dtype;
        self
    }

    /// The real checkpoint name behind a canonical name (the fused tensor for fused families).
    pub fn real_name(&self, canonical: &str) -> Option<String> {
        let (e, p, suffix) = parse_canonical(canonical)?;
        Some(match self.layout {
            ExpertLayout::PerExpert { gate, up, down } => {
                let proj = match p {
                    Canon::Gate => gate,
                    Canon::Up => up,
                    Canon::Down => down,
                };
                format!("{}experts.{e}.{proj}.{suffix}", self.prefix)
            }
            ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves => {
                let base = if p == Canon::Down { "down_proj" } else { "gate_up_proj" };
                match suffix {
                    "weight" => format!("{}experts.{base}", self.prefix),
                    "bias" => format!("{}experts.{base}_bias", self.prefix),
                    other => format!("{}experts.{base}_{other}", self.prefix),
                }
            }
        })
    }

    /// Checks, from the headers only, that every unquantized expert tensor the layer will ask
    /// for exists with the right shape, so a broken checkpoint is reported with the real tensor
    /// name before any weight is copied.
    pub fn check_complete(&self, bias: bool) -> Result<()> {
        let (e_n, h, i) = (self.num_experts, self.hidden, self.inter);
        let check = |real: &str, shape: &[usize]| -> Result<()> {
            match self.ckpt.info(real) {
                None if self.ckpt.contains(real) => Err(MoeError::BadCheckpoint {
                    path: self.ckpt.file_of(real).map(|p| p.display().to_string()).unwrap_or_default(),
                    detail: format!("tensor `{real}` has an unsupported dtype"),
                }),
                None => Err(MoeError::MissingTensor { name: real.to_string() }),
                Some((_, s)) if s != shape => Err(MoeError::shape(real, format!("{shape:?}"), s)),
                Some(_) => Ok(()),
            }
        };
        let suffixes: &[&str] = if bias { &["weight", "bias"] } else { &["weight"] };
        match self.layout {
            ExpertLayout::PerExpert { .. } => {
                for e in 0..e_n {
                    for &suffix in suffixes {
                        for (w, out, inp) in [("w1", i, h), ("w3", i, h), ("w2", h, i)] {
                            let canon = format!("{e}.{w}.{suffix}");
                            let real = self.real_name(&canon).unwrap_or(canon);
                            let shape: &[usize] = if suffix == "weight" { &[out, inp] } else { &[out] };
                            check(&real, shape)?;
                        }
                    }
                }
            }
            ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves => {
                let p = &self.prefix;
                check(&format!("{p}experts.gate_up_proj"), &[e_n, h, 2 * i])?;
                check(&format!("{p}experts.down_proj"), &[e_n, i, h])?;
                if bias {
                    check(&format!("{p}experts.gate_up_proj_bias"), &[e_n, 2 * i])?;
                    check(&format!("{p}experts.down_proj_bias"), &[e_n, h])?;
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> Result<Option<TensorView<'c>>> {
        let Some((e, p, suffix)) = parse_canonical(name) else { return Ok(None) };
        if e >= self.num_experts {
            return Ok(None);
        }
        let Some(real) = self.real_name(name) else { return Ok(None) };
        let Some(view) = self.ckpt.get(&real)? else { return Ok(None) };
        let (h, i) = (self.hidden, self.inter);
        match self.layout {
            ExpertLayout::PerExpert { .. } => {
                // Only unquantized float tensors have the logical shape; packed/scale tensors
                // belong to the quant method, which checks them.
                if view.dtype.is_float_activation() {
                    let expected: Vec<usize> = match (suffix, p) {
                        ("weight", Canon::Down) => vec![h, i],
                        ("weight", _) => vec![i, h],
                        ("bias", Canon::Down) => vec![h],
                        ("bias", _) => vec![i],
                        _ => view.shape.clone(),
                    };
                    view.expect_shape(&real, &expected)?;
                }
                Ok(Some(view))
            }
            ExpertLayout::FusedInterleaved | ExpertLayout::FusedHalves => {
                let interleaved = self.layout == ExpertLayout::FusedInterleaved;
                match (suffix, p) {
                    ("weight", Canon::Down) => {
                        // down_proj [E, I, H] (in × out) -> w2 [H, I].
                        view.expect_shape(&real, &[self.num_experts, i, h])?;
                        let slab = expert_slab(&view, e);
                        Ok(Some(transpose(&view, slab, i, h, |c| c, h)))
                    }
                    ("weight", _) => {
                        // gate_up_proj [E, H, 2I] (in × out) -> w1/w3 [I, H].
                        view.expect_shape(&real, &[self.num_experts, h, 2 * i])?;
                        let slab = expert_slab(&view, e);
                        let col = |c: usize| column_of(p, interleaved, c, i);
                        Ok(Some(transpose(&view, slab, h, i, col, 2 * i)))
                    }
                    ("bias", Canon::Down) => {
                        view.expect_shape(&real, &[self.num_experts, h])?;
                        let slab = expert_slab(&view, e);
                        Ok(Some(TensorView { dtype: view.dtype, shape: vec![h], data: slab }))
                    }
                    ("bias", _) => {
                        view.expect_shape(&real, &[self.num_experts, 2 * i])?;
                        let es = view.dtype.size_in_bytes();
                        let slab = expert_slab(&view, e);
                        let mut out = Vec::with_capacity(i * es);
                        for c in 0..i {
                            let src = column_of(p, interleaved, c, i) * es;
                            out.extend_from_slice(&slab[src..src + es]);
                        }
                        Ok(Some(TensorView { dtype: view.dtype, shape: vec![i], data: Cow::Owned(out) }))
                    }
                    _ => Err(MoeError::UnsupportedModel {
                        detail: format!(
                            "`{real}`: fused expert tensors other than weights and biases \
                             (quantized `_blocks`/`_scales`) are not mapped yet"
                        ),
                    }),
                }
            }
        }
    }

    fn convert(&self, name: &str, view: TensorView<'c>) -> Result<TensorView<'c>> {
        match self.cast {
            Some(to) if view.dtype != to && view.dtype.is_float_activation() && to.is_float_activation() => {
                let t = view.to_f32_vec(name)?;
                let converted = moe_core::Tensor::from_f32_as(to, view.shape.clone(), &t)?;
                let data = converted.view()?.data.into_owned();
                Ok(TensorView { dtype: to, shape: view.shape, data: Cow::Owned(data) })
            }
            _ => Ok(view),
        }
    }
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
    TensorView { dtype: view.dtype, shape: vec![cols, rows], data: Cow::Owned(out) }
}

impl WeightSource for ExpertSource<'_> {
    fn get(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        match self.lookup(name)? {
            Some(v) => self.convert(name, v).map(Some),
            None => Ok(None),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in 0..self.num_experts {
            for p in ["w1", "w3", "w2"] {
                for suffix in ["weight", "bias"] {
                    let n = format!("{e}.{p}.{suffix}");
                    if self.real_name(&n).is_some_and(|r| self.ckpt.contains(&r)) {
                        out.push(n);
                    }
                }
            }
        }
        out
    }

    fn describe(&self) -> String {
        format!("{} (experts under `{}`)", self.ckpt.dir().display(), self.prefix)
    }
}
