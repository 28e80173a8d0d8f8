//! Tests of the device routing (`super`): every method against moe-core's host routing, bit for bit
//! where the CPU's order of operations is reproduced, and the status word's error decoding.

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
        // 300: past WIDE_ROUTE_TOKENS, so the narrow blocks of large batches run too.
        for n in [1, 7, 130, 300] {
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
