//! Routing of router logits on the device: every method of `moe_core::RoutingMethod`, in f32, with the CPU's tie rule.
//!
//! [`route_device`] queues the kernel of `kernels/routing.cu` and returns at once: the NaN
//! policy of `moe_core::routing` (a NaN or `+inf` logit, a row with fewer than `k` finite
//! logits, a zero DeepSeek-V4 sum) cannot be enforced without reading the device, and a forward
//! must not wait for the device. So the kernel folds the first refusal, in the order the CPU
//! meets them, into a status word on the device, and [`DeviceRouting::check`] reads it (one
//! 8-byte copy and a stream synchronisation) only when a caller asks. Refused rows hold ids 0
//! and weights 0, so an unchecked forward reads valid expert ids.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use moe_core::{DType, MoeError, Result, RoutingMethod, Tensor};

use super::device::{CudaDevice, dev_err};
use super::ffi;
use super::storage::{CudaStorage, download};

const SRC: &str = include_str!("../kernels/routing.cu");
const MODULE: &str = "routing";
/// `ROUTE_THREADS` of routing.cu: one block of this many threads per token.
const THREADS: u32 = 128;
/// Dynamic shared memory the routing kernel may ask for (the default 48 KiB per block, less
/// the kernel's static buffers).
const MAX_SHARED_BYTES: usize = 46 * 1024;

/// Routing computed on the device: ids `[N, k]` (i32) and weights `[N, k]` (f32, `None`
/// exactly when `RoutingMethod::apply_host` returns none), plus the refusal status the kernel
/// wrote. Read [`DeviceRouting::check`] before trusting the values.
#[derive(Clone, Debug)]
pub struct DeviceRouting {
    pub ids: Tensor,
    pub weights: Option<Tensor>,
    /// `[1]` I64 status word (0: no refusal), `None` for methods that never read the logits.
    status: Option<Tensor>,
    num_tokens: usize,
    num_experts: usize,
    top_k: usize,
}

impl DeviceRouting {
    /// The device status word (`[1]` I64, 0 when every row was routed), for callers that check
    /// it later or on the device; `None` for methods that never read the logits.
    pub fn status(&self) -> Option<&Tensor> {
        self.status.as_ref()
    }

    /// The refusal the CPU would have raised for the same logits, as the same typed
    /// `MoeError::NonFinite`. Synchronises the host with the device's stream.
    pub fn check(&self) -> Result<()> {
        let Some(status) = &self.status else {
            return Ok(());
        };
        let host = download(status)?;
        let bytes = host.as_bytes("routing status")?;
        let word = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| MoeError::shape("routing status", "8 bytes", &[bytes.len()]))?;
        decode_status(word, self.num_tokens, self.num_experts, self.top_k)
    }

    /// Queues [`DeviceRouting::check`] for the device's next `CudaDevice::synchronize` and
    /// returns the ids and weights without waiting.
    pub fn into_deferred(self) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(status) = self.status.clone() {
            let dev = CudaStorage::of(&status, "routing status")?.device().clone();
            let (num_tokens, num_experts, top_k) = (self.num_tokens, self.num_experts, self.top_k);
            dev.defer_check(move || {
                let ids = status.clone();
                DeviceRouting {
                    ids,
                    weights: None,
                    status: Some(status),
                    num_tokens,
                    num_experts,
                    top_k,
                }
                .check()
            });
        }
        Ok((self.ids, self.weights))
    }

    /// [`DeviceRouting::check`], then the ids and weights.
    pub fn into_checked(self) -> Result<(Tensor, Option<Tensor>)> {
        self.check()?;
        Ok((self.ids, self.weights))
    }
}

/// Turns the status word into the error the CPU path raises. Layout (routing.cu, `report`):
/// the word is the complement of `code << 32 | detail`; codes below `N * (E + 1)` are logits
/// refusals (`token * (E + 1) + expert`, or `+ E` for too few finite logits with their count
/// as detail), the rest weight refusals (`N * (E + 1) + token`, the f32 sum's bits as detail).
fn decode_status(word: u64, n: usize, e: usize, k: usize) -> Result<()> {
    if word == 0 {
        return Ok(());
    }
    let key = !word;
    let (code, detail) = (key >> 32, key as u32);
    let per_token = e as u64 + 1;
    let logit_codes = n as u64 * per_token;
    if code < logit_codes {
        let (t, j) = (code / per_token, code % per_token);
        let location = if j < e as u64 {
            format!("token {t}, expert {j}")
        } else {
            format!("token {t}: only {detail} finite logits for top_k {k}")
        };
        return Err(MoeError::NonFinite {
            what: "router_logits".into(),
            location,
        });
    }
    let t = code - logit_codes;
    if t >= n as u64 {
        return Err(MoeError::Backend(
            format!("routing status word {word:#x} names no token of {n}").into(),
        ));
    }
    Err(MoeError::NonFinite {
        what: "routing_weights".into(),
        location: format!("token {t}: the selected scores sum to {}", f32::from_bits(detail)),
    })
}

/// The kernel's view of a method that reads the logits (codes of routing.cu).
struct Plan<'m> {
    method: i32,
    score_fn: i32,
    bias: Option<&'m [f32]>,
    norm: i32,
    scale: f32,
    n_group: usize,
    topk_group: usize,
    eps: f32,
}

impl<'m> Plan<'m> {
    fn new(method: i32) -> Self {
        Plan {
            method,
            score_fn: 0,
            bias: None,
            norm: 0,
            scale: 1.0,
            n_group: 1,
            topk_group: 1,
            eps: 0.0,
        }
    }

    /// The score-then-bias family (methods.rs `scored_row`).
    fn scored(score_fn: i32, bias: Option<&'m [f32]>, norm: i32, scale: f32) -> Self {
        Plan {
            score_fn,
            bias,
            norm,
            scale,
            ..Plan::new(M_SCORED)
        }
    }

    /// `None` for the methods that never read the logits (static table, load balanced).
    fn of(m: &'m RoutingMethod) -> Option<Self> {
        Some(match m {
            RoutingMethod::Default { .. } => Plan::new(M_SOFTMAX_TOPK),
            // methods.rs runs RenormalizeNaive through Renormalize's math.
            RoutingMethod::Renormalize { .. } | RoutingMethod::RenormalizeNaive { .. } => Plan::new(M_TOPK_SOFTMAX),
            RoutingMethod::Llama4 { .. } => Plan::new(M_TOPK_SIGMOID),
            RoutingMethod::DeepSeekV3 {
                n_group,
                topk_group,
                routed_scaling_factor,
                e_score_correction_bias,
                renormalize,
                ..
            } => {
                let norm = if *renormalize { N_EPS } else { N_RAW };
                let bias = e_score_correction_bias.as_deref();
                if *n_group > 1 {
                    Plan {
                        bias,
                        norm,
                        scale: *routed_scaling_factor,
                        n_group: *n_group,
                        topk_group: *topk_group,
                        ..Plan::new(M_GROUPED)
                    }
                } else {
                    Plan::scored(S_SIGMOID, bias, norm, *routed_scaling_factor)
                }
            }
            RoutingMethod::DeepSeekV4 {
                routed_scaling_factor,
                bias,
                ..
            } => Plan::scored(S_SQRT_SOFTPLUS, bias.as_deref(), N_EXACT, *routed_scaling_factor),
            RoutingMethod::MiniMax2 {
                bias,
                routed_scaling_factor,
                ..
            } => Plan::scored(S_SIGMOID, bias.as_deref(), N_EPS, *routed_scaling_factor),
            RoutingMethod::SqrtSoftplus { bias, .. } => Plan::scored(S_SQRT_SOFTPLUS, bias.as_deref(), N_EPS, 1.0),
            RoutingMethod::SigmoidRenorm { renormalize, .. } => {
                Plan::scored(S_SIGMOID, None, if *renormalize { N_EPS } else { N_RAW }, 1.0)
            }
            RoutingMethod::SparseMixer { eps, .. } => Plan {
                eps: *eps,
                ..Plan::new(M_SPARSE_MIXER)
            },
            RoutingMethod::Static { .. } | RoutingMethod::LoadBalanced { .. } => return None,
        })
    }
}

// Method, score and norm codes of routing.cu.
const M_SOFTMAX_TOPK: i32 = 0;
const M_TOPK_SOFTMAX: i32 = 1;
const M_TOPK_SIGMOID: i32 = 2;
const M_SCORED: i32 = 3;
const M_GROUPED: i32 = 4;
const M_SPARSE_MIXER: i32 = 5;
const S_SIGMOID: i32 = 0;
const S_SQRT_SOFTPLUS: i32 = 1;
const N_RAW: i32 = 0;
const N_EPS: i32 = 1;
const N_EXACT: i32 = 2;

/// The dtype code routing.cu and rows.cu read float tensors with.
pub(crate) fn float_dtype_code(dtype: DType, what: &str) -> Result<i32> {
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

/// Routes device logits `[N, E]` (f32, bf16 or f16) with `method`; the result lives on the
/// logits' device. Ids and weights equal `RoutingMethod::apply_host` on the same logits
/// (weights within an ulp or two: the device's exp/log1p may round differently from the host
/// libm's in rare cases). Parameter and shape errors are returned at once; refusals of the
/// logits' values only through [`DeviceRouting::check`] (module doc).
pub fn route_device(method: &RoutingMethod, logits: &Tensor) -> Result<DeviceRouting> {
    if logits.shape().len() != 2 {
        return Err(MoeError::shape("router_logits", "[N, E]", logits.shape()));
    }
    let (n, e) = (logits.shape()[0], logits.shape()[1]);
    let storage = CudaStorage::of(logits, "router_logits")?;
    let dtype = float_dtype_code(logits.dtype(), "router_logits")?;
    method.validate(e)?;
    if i32::try_from(e).is_err() {
        return Err(MoeError::config(
            "num_experts",
            format!("{e} experts do not fit i32 expert ids"),
        ));
    }
    let k = method.top_k();
    let dev = storage.device().clone();
    let out = |ids, weights, status| DeviceRouting {
        ids,
        weights,
        status,
        num_tokens: n,
        num_experts: e,
        top_k: k,
    };
    match method {
        RoutingMethod::Static { ids, scales, .. } => {
            // methods.rs: static_table (validate checked that the scales match the ids).
            if n.checked_mul(k) != Some(ids.len()) {
                return Err(MoeError::shape(
                    "routing.ids",
                    format!("[{n}, {k}] (one row per token)"),
                    &[ids.len() / k, k],
                ));
            }
            // Uploaded once per device and reused: a per-call upload is a pageable host copy,
            // which a CUDA graph cannot capture (graph.rs).
            let ids_t = dev.constant(&Tensor::from_i32(vec![n, k], ids.clone())?, "routing.ids")?;
            let w = match scales {
                Some(s) => Some(dev.constant(&Tensor::from_f32(vec![n, k], s.clone())?, "routing.scales")?),
                None => None,
            };
            Ok(out(ids_t, w, None))
        }
        RoutingMethod::LoadBalanced { .. } => {
            let (ids_t, w) = load_balanced(&dev, n, e, k)?;
            Ok(out(ids_t, Some(w), None))
        }
        _ => {
            let plan = Plan::of(method).ok_or_else(|| MoeError::lifecycle("routing plan of a table method"))?;
            let (ids_t, w, status) = route_logits(&dev, storage, dtype, n, e, k, &plan)?;
            Ok(out(ids_t, Some(w), status))
        }
    }
}

/// Bytes of dynamic shared memory routing.cu's `route_logits` uses (its layout comment).
fn shared_bytes(e: usize, k: usize, groups: usize) -> usize {
    (2 * e + 4 * groups.max(1) + 2 * k) * 4
}

fn route_logits(
    dev: &CudaDevice,
    logits: &CudaStorage,
    dtype: i32,
    n: usize,
    e: usize,
    k: usize,
    plan: &Plan<'_>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let loc = dev.location();
    // Status codes must stay below 2^32 - 1 (routing.cu: report); this also keeps N, E and k
    // within the kernel's `int` parameters.
    let codes = (n as u128) * (e as u128 + 2);
    if codes >= u128::from(u32::MAX) {
        return Err(MoeError::shape(
            "router_logits",
            format!("N * (E + 2) below {} for device routing", u32::MAX),
            &[n, e],
        ));
    }
    let groups = if plan.method == M_GROUPED { plan.n_group } else { 1 };
    let shared = shared_bytes(e, k, groups);
    if shared > MAX_SHARED_BYTES {
        return Err(MoeError::config(
            "num_experts",
            format!(
                "{e} experts with top_k {k} need {shared} bytes of shared memory per token; device routing takes at most {MAX_SHARED_BYTES}"
            ),
        ));
    }

    let mut ids_s = dev.alloc_storage(n * k * 4)?;
    let mut w_s = dev.alloc_storage(n * k * 4)?;
    // Inside a graph capture the status word is one of the graph's, allocated before the
    // capture and checked after each replay (graph.rs); a word allocated here would be the
    // graph's allocation, never freed inside it.
    let captured = dev.captured_status(Box::new(move |word| decode_status(word, n, e, k)))?;
    let mut status_s = match captured {
        Some(_) => None,
        None => {
            let mut s = dev.alloc_storage(8)?;
            {
                let mut v = s.view_mut::<u64>(1)?;
                // A memset, not an upload of a zero: capturable, and no host copy.
                dev.stream()
                    .memset_zeros(&mut v)
                    .map_err(|e| dev_err(&loc, "clearing the routing status", e))?;
            }
            Some(s)
        }
    };
    // Without a bias the kernel reads none; it still needs a valid pointer argument. The bias
    // is uploaded once per device (a per-call upload is a pageable host copy, which a CUDA
    // graph cannot capture).
    let bias_t = match plan.bias {
        Some(b) => dev.constant(&Tensor::from_f32(vec![b.len()], b.to_vec())?, "routing bias")?,
        None => dev.zeros(DType::F32, vec![1])?,
    };
    if n > 0 {
        let func = dev.function(MODULE, SRC, "route_logits")?;
        let bias_s = CudaStorage::of(&bias_t, "routing bias")?;
        let bias_v = bias_s.view::<f32>(bias_t.numel())?;
        let elem = if dtype == 0 { 4 } else { 2 };
        let logits_v = logits.view::<u8>(n * e * elem)?;
        let mut ids_v = ids_s.view_mut::<i32>(n * k)?;
        let mut w_v = w_s.view_mut::<f32>(n * k)?;
        // Scalars in the order and C types of route_logits' parameters.
        let (n_i, e_i, k_i) = (n as i32, e as i32, k as i32);
        let has_bias = i32::from(plan.bias.is_some());
        let (n_group, topk_group) = (plan.n_group as i32, plan.topk_group as i32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let mut launch = |status: &mut CudaStorage| -> Result<()> {
            let mut status_v = status.view_mut::<u64>(1)?;
            let (ids_r, w_r, status_r) = (&mut ids_v, &mut w_v, &mut status_v);
            ffi::launch(dev.stream(), &func, cfg, &loc, |args| {
                args.arg(&logits_v)
                    .arg(&dtype)
                    .arg(&n_i)
                    .arg(&e_i)
                    .arg(&k_i)
                    .arg(&plan.method)
                    .arg(&plan.score_fn)
                    .arg(&bias_v)
                    .arg(&has_bias)
                    .arg(&plan.norm)
                    .arg(&plan.scale)
                    .arg(&n_group)
                    .arg(&topk_group)
                    .arg(&plan.eps)
                    .arg(ids_r)
                    .arg(w_r)
                    .arg(status_r);
            })
        };
        match (&captured, status_s.as_mut()) {
            (Some(word), _) => word.with_word(launch)?,
            (None, Some(s)) => launch(s)?,
            (None, None) => return Err(MoeError::lifecycle("routing status word missing")),
        }
    }
    Ok((
        dev.tensor(DType::I32, vec![n, k], ids_s),
        dev.tensor(DType::F32, vec![n, k], w_s),
        status_s.map(|s| dev.tensor(DType::I64, vec![1], s)),
    ))
}

/// `LoadBalanced`: ids cycle through `0..E` over the flattened slots, weights 1.
fn load_balanced(dev: &CudaDevice, n: usize, e: usize, k: usize) -> Result<(Tensor, Tensor)> {
    let total = n * k;
    let mut ids_s = dev.alloc_storage(total * 4)?;
    let mut w_s = dev.alloc_storage(total * 4)?;
    if total > 0 {
        let func = dev.function(MODULE, SRC, "route_load_balanced")?;
        let mut ids_v = ids_s.view_mut::<i32>(total)?;
        let mut w_v = w_s.view_mut::<f32>(total)?;
        let (total_u, e_u) = (total as u64, e as u64);
        let blocks = total.div_ceil(256).min(dev.multiprocessors() as usize * 8).max(1) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (ids_r, w_r) = (&mut ids_v, &mut w_v);
        ffi::launch(dev.stream(), &func, cfg, &dev.location(), |args| {
            args.arg(ids_r).arg(w_r).arg(&total_u).arg(&e_u);
        })?;
    }
    Ok((
        dev.tensor(DType::I32, vec![n, k], ids_s),
        dev.tensor(DType::F32, vec![n, k], w_s),
    ))
}

#[cfg(test)]
mod tests {
    use moe_core::{DType, MoeError, Result, RoutingMethod, RoutingOutput, Tensor};

    use super::{DeviceRouting, decode_status, route_device};
    use crate::cuda::{CudaDevice, download};
    use crate::ops;

    /// The workspace's SplitMix64 with the draws these cases were written with.
    struct Rng(moe_core::prng::SplitMix64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(moe_core::prng::SplitMix64::new(seed))
        }
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        /// Uniform in (0, 1).
        fn unit(&mut self) -> f64 {
            ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        /// Box-Muller normal, times `scale`.
        fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let (u, v) = (self.unit(), self.unit());
                    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32 * scale
                })
                .collect()
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The testkit matrix's DeepSeek-V3 grouping for `e` experts and top-k `k`.
    fn deepseek_groups(e: usize, k: usize) -> (usize, usize) {
        let n_group = (1..=4)
            .rev()
            .find(|g| e.is_multiple_of(*g) && (*g == 1 || e / g >= 2))
            .unwrap_or(1);
        let per_group = e / n_group;
        let topk_group = (n_group.min(2)..=n_group)
            .find(|tg| tg * per_group >= k)
            .unwrap_or(n_group);
        (n_group, topk_group)
    }

    /// Every routing method, with each option both ways (bias or none, renormalized or not,
    /// grouped or single-group DeepSeek-V3, table with and without scales).
    fn methods(e: usize, k: usize, n: usize, rng: &mut Rng) -> Vec<RoutingMethod> {
        use RoutingMethod as R;
        let mut bias = || Some(rng.normals(e, 0.5));
        let (n_group, topk_group) = deepseek_groups(e, k);
        let mut out = vec![
            R::Default { top_k: k },
            R::Renormalize { top_k: k },
            R::RenormalizeNaive { top_k: k },
            R::Llama4 { top_k: k },
            R::DeepSeekV3 {
                top_k: k,
                n_group,
                topk_group,
                routed_scaling_factor: 2.5,
                e_score_correction_bias: bias(),
                renormalize: true,
            },
            R::DeepSeekV3 {
                top_k: k,
                n_group,
                topk_group,
                routed_scaling_factor: 1.0,
                e_score_correction_bias: None,
                renormalize: false,
            },
            R::DeepSeekV3 {
                top_k: k,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 2.5,
                e_score_correction_bias: bias(),
                renormalize: true,
            },
            R::DeepSeekV3 {
                top_k: k,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
                e_score_correction_bias: None,
                renormalize: false,
            },
            R::DeepSeekV4 {
                top_k: k,
                routed_scaling_factor: 1.5,
                bias: bias(),
            },
            R::DeepSeekV4 {
                top_k: k,
                routed_scaling_factor: 1.0,
                bias: None,
            },
            R::MiniMax2 {
                top_k: k,
                bias: bias(),
                routed_scaling_factor: 1.0,
            },
            R::MiniMax2 {
                top_k: k,
                bias: None,
                routed_scaling_factor: 2.0,
            },
            R::SqrtSoftplus { top_k: k, bias: bias() },
            R::SqrtSoftplus { top_k: k, bias: None },
            R::SigmoidRenorm {
                top_k: k,
                renormalize: true,
            },
            R::SigmoidRenorm {
                top_k: k,
                renormalize: false,
            },
            R::SparseMixer { top_k: k, eps: 0.01 },
            R::SparseMixer { top_k: k, eps: 0.2 },
            R::LoadBalanced { top_k: k },
        ];
        // DeepSeek-V3's published grouping (8 groups, 4 chosen) where it fits.
        if e.is_multiple_of(8) && e / 8 >= 2 && k <= 4 * (e / 8) {
            out.push(R::DeepSeekV3 {
                top_k: k,
                n_group: 8,
                topk_group: 4,
                routed_scaling_factor: 2.5,
                e_score_correction_bias: bias(),
                renormalize: true,
            });
        }
        // Static tables: k distinct experts per row (partial Fisher-Yates).
        let mut ids = Vec::with_capacity(n * k);
        for _ in 0..n {
            let mut experts: Vec<i32> = (0..e as i32).collect();
            for j in 0..k {
                let pick = j + rng.below(e - j);
                experts.swap(j, pick);
            }
            ids.extend_from_slice(&experts[..k]);
        }
        let scales = (0..n * k).map(|_| 0.25 + 0.5 * rng.unit() as f32).collect();
        out.push(R::Static {
            top_k: k,
            ids: ids.clone(),
            scales: Some(scales),
        });
        out.push(R::Static {
            top_k: k,
            ids,
            scales: None,
        });
        out
    }

    /// Normal logits with planted exact ties and `-inf` entries, row by row.
    fn logits(rng: &mut Rng, n: usize, e: usize, k: usize) -> Vec<f32> {
        let mut v = rng.normals(n * e, 2.0);
        for (t, row) in v.chunks_mut(e).enumerate() {
            match t % 5 {
                0 => {
                    // The maximum repeated at another expert: a tie at the top.
                    let top = (0..e).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                    row[rng.below(e)] = row[top];
                }
                1 => {
                    // Three experts share one value.
                    let x = row[rng.below(e)];
                    for _ in 0..2 {
                        row[rng.below(e)] = x;
                    }
                }
                2 => {
                    // A few `-inf` logits, at least k finite ones left.
                    for _ in 0..(e - k).min(3) {
                        row[rng.below(e)] = f32::NEG_INFINITY;
                    }
                }
                3 => row.fill(0.5),
                _ => {}
            }
        }
        v
    }

    fn close(got: f32, want: f32) -> bool {
        got == want || (got - want).abs() <= 1e-6 * want.abs()
    }

    /// The device result equals the host's: the same error, or the same ids and weights
    /// within 1e-6 relative.
    fn assert_same(label: &str, host: Result<RoutingOutput>, dev: &DeviceRouting) -> Result<()> {
        let want = match host {
            Err(want) => {
                let got = dev.check().map_err(|e| e.to_string());
                assert_eq!(got, Err(want.to_string()), "{label}");
                return Ok(());
            }
            Ok(want) => want,
        };
        dev.check()?;
        assert_eq!(dev.ids.shape(), [want.num_tokens, want.top_k], "{label}: ids shape");
        assert_eq!(dev.ids.dtype(), DType::I32, "{label}");
        let ids = download(&dev.ids)?;
        assert_eq!(ids.as_i32("ids")?, &want.ids[..], "{label}: ids");
        match (&dev.weights, &want.weights) {
            (None, None) => {}
            (Some(w), Some(want_w)) => {
                assert_eq!(w.dtype(), DType::F32, "{label}");
                let w = download(w)?;
                let got = w.as_f32("weights")?;
                assert_eq!(got.len(), want_w.len(), "{label}: weights length");
                for (i, (&g, &h)) in got.iter().zip(want_w).enumerate() {
                    assert!(close(g, h), "{label}: weight {i}: device {g}, host {h}");
                }
            }
            (got, want) => panic!(
                "{label}: device weights present {}, host {}",
                got.is_some(),
                want.is_some()
            ),
        }
        Ok(())
    }

    #[test]
    fn every_method_matches_the_host_on_random_logits() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let mut rng = Rng::new(0x5eed_0001);
        for (e, k) in [(8, 2), (64, 6), (256, 8), (256, 16), (512, 16)] {
            for n in [1, 7, 130] {
                let methods = methods(e, k, n, &mut rng);
                let values = logits(&mut rng, n, e, k);
                for dtype in [DType::F32, DType::BF16, DType::F16] {
                    let host_t = Tensor::from_f32_as(dtype, vec![n, e], &values)?;
                    let dev_t = dev.upload(&host_t)?;
                    let host_f32 = host_t.to_f32_vec("logits")?;
                    for m in &methods {
                        let label = format!("{m:?} E={e} k={k} N={n} {dtype}");
                        let routed = route_device(m, &dev_t)?;
                        assert_same(&label, m.apply_host(&host_f32, n, e), &routed)?;
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn exact_ties_go_to_the_lower_expert_index() -> Result<()> {
        use RoutingMethod as R;
        let dev = CudaDevice::new(0)?;
        let (n, e, k) = (3, 64, 5);
        // Every logit equal: every method picks experts 0..k, in order.
        let t = dev.upload(&Tensor::from_f32(vec![n, e], vec![0.25; n * e])?)?;
        let want: Vec<i32> = (0..n).flat_map(|_| 0..k as i32).collect();
        let methods = [
            R::Default { top_k: k },
            R::Renormalize { top_k: k },
            R::Llama4 { top_k: k },
            R::DeepSeekV3 {
                top_k: k,
                n_group: 4,
                topk_group: 2,
                routed_scaling_factor: 1.0,
                e_score_correction_bias: None,
                renormalize: true,
            },
            R::DeepSeekV4 {
                top_k: k,
                routed_scaling_factor: 1.0,
                bias: None,
            },
            R::MiniMax2 {
                top_k: k,
                bias: None,
                routed_scaling_factor: 1.0,
            },
            R::SigmoidRenorm {
                top_k: k,
                renormalize: true,
            },
            R::SparseMixer { top_k: k, eps: 0.01 },
        ];
        for m in &methods {
            let (ids, _) = route_device(m, &t)?.into_checked()?;
            assert_eq!(download(&ids)?.as_i32("ids")?, &want[..], "{}", m.name());
        }
        Ok(())
    }

    /// The methods that read the logits, for the refusal tests.
    fn logit_methods(e: usize, k: usize) -> Vec<RoutingMethod> {
        let mut rng = Rng::new(3);
        methods(e, k, 1, &mut rng)
            .into_iter()
            .filter(|m| !matches!(m, RoutingMethod::Static { .. } | RoutingMethod::LoadBalanced { .. }))
            .collect()
    }

    #[test]
    fn nan_logit_is_refused_naming_token_and_expert() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let (n, e, k) = (7, 64, 6);
        let mut v = Rng::new(7).normals(n * e, 1.0);
        v[3 * e + 5] = f32::NAN;
        v[5 * e + 1] = f32::NAN; // a later token: the first is named
        let t = dev.upload(&Tensor::from_f32(vec![n, e], v.clone())?)?;
        for m in logit_methods(e, k) {
            // Queued without waiting: the refusal surfaces only at check.
            let routed = route_device(&m, &t)?;
            match routed.check() {
                Err(MoeError::NonFinite { what, location }) => {
                    assert_eq!(
                        (what.as_str(), location.as_str()),
                        ("router_logits", "token 3, expert 5")
                    );
                }
                other => panic!("{}: expected NonFinite, got {other:?}", m.name()),
            }
            assert_same(m.name(), m.apply_host(&v, n, e), &routed)?;
            // The forward's routing does not wait: the refusal surfaces at the device's next
            // synchronisation, once.
            ops::route(&m, &t)?;
            assert!(
                matches!(dev.synchronize(), Err(MoeError::NonFinite { .. })),
                "{}",
                m.name()
            );
            dev.synchronize()?;
        }
        Ok(())
    }

    #[test]
    fn pos_inf_and_too_few_finite_are_refused_like_the_host() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let (n, e, k) = (6, 64, 6);
        let base = Rng::new(11).normals(n * e, 1.0);
        let mut cases = Vec::new();
        // +inf before a NaN in one row: the lower expert is named.
        let mut v = base.clone();
        v[2 * e + 30] = f32::NAN;
        v[2 * e + 9] = f32::INFINITY;
        cases.push(v);
        // Too few finite logits at token 1 beats a NaN at token 4.
        let mut v = base.clone();
        v[e..2 * e].fill(f32::NEG_INFINITY);
        v[e + 3] = 0.0;
        v[4 * e + 7] = f32::NAN;
        cases.push(v);
        // A NaN in a row that also has too few finite logits: the NaN is named.
        let mut v = base.clone();
        v[3 * e..4 * e].fill(f32::NEG_INFINITY);
        v[3 * e + 40] = f32::NAN;
        cases.push(v);
        for v in cases {
            let t = dev.upload(&Tensor::from_f32(vec![n, e], v.clone())?)?;
            for m in logit_methods(e, k) {
                let host = m.apply_host(&v, n, e);
                assert!(host.is_err(), "{}: the host accepts the case", m.name());
                assert_same(m.name(), host, &route_device(&m, &t)?)?;
            }
        }
        Ok(())
    }

    #[test]
    fn deepseek_v4_zero_sum_is_refused_like_the_host() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let (n, e, k) = (7, 8, 2);
        let m = RoutingMethod::DeepSeekV4 {
            top_k: k,
            routed_scaling_factor: 1.0,
            bias: None,
        };
        // sqrt(softplus(-200)) is 0 in f32: rows 2 and 5 sum to 0, row 2 is named.
        let mut v = Rng::new(5).normals(n * e, 1.0);
        v[2 * e..3 * e].fill(-200.0);
        v[5 * e..6 * e].fill(-200.0);
        let t = dev.upload(&Tensor::from_f32(vec![n, e], v.clone())?)?;
        let routed = route_device(&m, &t)?;
        match routed.check() {
            Err(MoeError::NonFinite { what, location }) => {
                assert_eq!(what, "routing_weights");
                assert_eq!(location, "token 2: the selected scores sum to 0");
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert_same("zero sum", m.apply_host(&v, n, e), &routed)?;
        // A logits refusal anywhere comes first, as the CPU checks every row before routing.
        v[6 * e + 1] = f32::NAN;
        let t = dev.upload(&Tensor::from_f32(vec![n, e], v.clone())?)?;
        assert_same("zero sum and NaN", m.apply_host(&v, n, e), &route_device(&m, &t)?)
    }

    #[test]
    fn status_word_decodes_every_refusal() {
        let (n, e, k) = (4, 64, 2);
        let word = |code: u64, detail: u32| !((code << 32) | u64::from(detail));
        let msg = |w: u64| decode_status(w, n, e, k).map_err(|err| err.to_string());
        assert_eq!(msg(0), Ok(()));
        let per = e as u64 + 1;
        assert_eq!(
            msg(word(3 * per + 5, 0)),
            Err("non-finite value in `router_logits` at token 3, expert 5".into())
        );
        assert_eq!(
            msg(word(per + e as u64, 1)),
            Err("non-finite value in `router_logits` at token 1: only 1 finite logits for top_k 2".into())
        );
        assert_eq!(
            msg(word(n as u64 * per + 2, 0.0f32.to_bits())),
            Err("non-finite value in `routing_weights` at token 2: the selected scores sum to 0".into())
        );
        assert!(matches!(
            decode_status(word(n as u64 * per + n as u64, 0), n, e, k),
            Err(MoeError::Backend(_))
        ));
    }

    #[test]
    fn ops_route_on_the_device_matches_ops_route_on_the_host() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let (n, e, k) = (33, 64, 6);
        let mut rng = Rng::new(17);
        let host_t = Tensor::from_f32_as(DType::BF16, vec![n, e], &logits(&mut rng, n, e, k))?;
        let dev_t = dev.upload(&host_t)?;
        for m in methods(e, k, n, &mut rng) {
            let want = ops::route(&m, &host_t)?;
            let got = ops::route(&m, &dev_t)?;
            assert!(!got.ids.is_host(), "{}: ids left the device", m.name());
            assert_eq!(
                download(&got.ids)?.as_i32("ids")?,
                want.ids.as_i32("ids")?,
                "{}",
                m.name()
            );
            match (got.weights, want.weights) {
                (Some(g), Some(w)) => {
                    let g = download(&g)?;
                    for (a, b) in g.as_f32("w")?.iter().zip(w.as_f32("w")?) {
                        assert!(close(*a, *b), "{}: device {a}, host {b}", m.name());
                    }
                }
                (None, None) => {}
                _ => panic!("{}: weights presence differs", m.name()),
            }
        }
        Ok(())
    }

    #[test]
    fn bad_inputs_are_typed_errors() -> Result<()> {
        let dev = CudaDevice::new(0)?;
        let m = RoutingMethod::Renormalize { top_k: 2 };
        let host = Tensor::from_f32(vec![2, 4], vec![0.0; 8])?;
        assert!(matches!(route_device(&m, &host), Err(MoeError::DTypeMismatch { .. })));
        let ints = dev.upload(&Tensor::from_i32(vec![2, 4], vec![0; 8])?)?;
        assert!(matches!(route_device(&m, &ints), Err(MoeError::DTypeMismatch { .. })));
        let flat = dev.upload(&Tensor::from_f32(vec![8], vec![0.0; 8])?)?;
        assert!(matches!(route_device(&m, &flat), Err(MoeError::ShapeMismatch { .. })));
        let logits = dev.upload(&host)?;
        let too_many = RoutingMethod::Renormalize { top_k: 5 };
        assert!(matches!(
            route_device(&too_many, &logits),
            Err(MoeError::InvalidConfig { .. })
        ));
        let table = RoutingMethod::Static {
            top_k: 2,
            ids: vec![0, 1],
            scales: None,
        };
        assert!(matches!(
            route_device(&table, &logits),
            Err(MoeError::ShapeMismatch { .. })
        ));
        // No tokens: empty results, nothing refused.
        let empty = dev.upload(&Tensor::from_f32(vec![0, 4], vec![])?)?;
        let (ids, w) = route_device(&m, &empty)?.into_checked()?;
        assert_eq!(ids.shape(), [0, 2]);
        assert_eq!(w.map(|w| w.shape().to_vec()), Some(vec![0, 2]));
        Ok(())
    }
}
