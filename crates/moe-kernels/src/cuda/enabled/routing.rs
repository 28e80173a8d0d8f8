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
/// Threads of routing.cu's block per token. Up to [`WIDE_ROUTE_TOKENS`] tokens a block has a
/// multiprocessor to itself and its latency is the kernel's: four warps share the element-wise
/// work. Past that, tokens queue for multiprocessors and a token's time is mostly k rounds of a
/// block argmax and sums in the CPU's order on one thread: one warp per 256 experts (at most
/// four) keeps the barriers cheap and lets more tokens share a multiprocessor. Measured on an
/// H100 (Qwen3-30B-A3B, 128 experts): 4096 tokens 54 -> 27 us with one warp, one token 12.2 us
/// with four warps against 14.5 with one.
fn route_threads(num_experts: usize, num_tokens: usize) -> u32 {
    if num_tokens <= WIDE_ROUTE_TOKENS {
        128
    } else {
        32 * num_experts.div_ceil(256).clamp(1, 4) as u32
    }
}
/// Token counts routed by blocks of four warps (about two blocks per multiprocessor on an H100).
const WIDE_ROUTE_TOKENS: usize = 256;
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
            block_dim: (route_threads(e, n), 1, 1),
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
#[path = "routing_tests.rs"]
mod tests;
