//! Skip decisions come from the resolution report alone: the requested backend's rejection
//! (closed reason + detail) is the skip; anything else is a run or an error, never a skip.

use moe_core::{
    DType, MoeConfig, MoeEnvironment, RejectReason, RejectedCandidate, ResolutionReport, RoutingMethod, SelectedBy,
};
use moe_testkit::skip::{Decision, decision_from_report};

/// A report from the real factory with its verdict fields replaced, so new report fields
/// never break these tests.
fn report(winner: Option<&str>, rejected: &[(&str, RejectReason)]) -> ResolutionReport {
    let config = MoeConfig::new(8, 16, 16, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
    let env = MoeEnvironment {
        cpu_threads: 1,
        cuda_sm: None,
        available_deps: vec![],
    };
    let mut r = moe::resolve_moe_impl(&config, &env).expect("plain f32 layer resolves");
    r.winner = winner.map(str::to_string);
    r.selected_by = if winner.is_some() {
        SelectedBy::Pinned
    } else {
        SelectedBy::Failed
    };
    r.eligible = winner.into_iter().map(str::to_string).collect();
    r.rejected = rejected
        .iter()
        .map(|(b, r)| RejectedCandidate {
            backend: b.to_string(),
            reason: *r,
            detail: format!("{b} says no"),
        })
        .collect();
    r
}

#[test]
fn the_winner_runs() {
    assert_eq!(
        decision_from_report("cpu", &report(Some("cpu"), &[])).unwrap(),
        Decision::Run
    );
}

#[test]
fn a_rejected_request_skips_with_its_reason_even_when_a_fallback_won() {
    let r = report(Some("cpu"), &[("gpu", RejectReason::DeviceUnsupported)]);
    let Decision::Skip(s) = decision_from_report("gpu", &r).unwrap() else {
        panic!("expected a skip")
    };
    assert_eq!(s.backend, "gpu");
    assert_eq!(s.reason, RejectReason::DeviceUnsupported);
    assert_eq!(s.detail, "gpu says no");
    assert_eq!(s.to_string(), "gpu rejects: DEVICE_UNSUPPORTED (gpu says no)");
}

#[test]
fn losing_without_a_rejection_is_an_error_not_a_skip() {
    assert!(decision_from_report("gpu", &report(Some("cpu"), &[])).is_err());
}

/// The `cuda` gate reads the compute capability: Ampere (8.0, 8.6), whose NVRTC compile of the
/// kernels' E4M3 conversions fails, is refused before any kernel is asked for; Ada (8.9) and
/// Hopper (9.0) pass it.
#[test]
fn cuda_refuses_devices_older_than_sm_89() {
    let mut env = moe::probe_environment();
    if !env.available_deps.iter().any(|d| d == "cuda") {
        env.available_deps.push("cuda".into());
    }
    let mut c = MoeConfig::new(8, 32, 48, DType::BF16, RoutingMethod::Renormalize { top_k: 2 });
    c.backend = Some("cuda".to_string());
    for (sm, runs) in [(80, false), (86, false), (89, true), (90, true)] {
        env.cuda_sm = Some(sm);
        match moe_testkit::decide(&c, &env).unwrap() {
            Decision::Run => assert!(runs, "sm_{sm} must be refused"),
            Decision::Skip(s) => {
                assert!(!runs, "sm_{sm} must run: {s}");
                assert_eq!(s.reason, RejectReason::DeviceUnsupported, "{s}");
            }
        }
    }
}

/// Every registered backend runs plain f32 SwiGLU where its device is present; a backend whose
/// device this machine lacks (`cuda` without a GPU or without the `cuda` build) is skipped with
/// `DEP_MISSING`, and runs once the environment says the device is there.
#[test]
fn the_real_factory_decides_the_real_backends() {
    let env = moe::probe_environment();
    let mut with_gpu = env.clone();
    if !with_gpu.available_deps.iter().any(|d| d == "cuda") {
        with_gpu.available_deps.push("cuda".into());
        with_gpu.cuda_sm = Some(90);
    }
    for entry in moe::REGISTRY {
        let name = entry.name;
        let device = (entry.capabilities)().device;
        let present = device == "cpu" || env.available_deps.contains(&device);
        let mut c = MoeConfig::new(8, 32, 48, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
        c.backend = Some(name.to_string());
        match moe_testkit::decide(&c, &env).unwrap() {
            Decision::Run => assert!(present, "{name} runs without its device `{device}`"),
            Decision::Skip(s) => {
                assert!(!present, "{name} must run plain f32 SwiGLU: {s}");
                assert_eq!((s.backend.as_str(), s.reason), (name, RejectReason::DepMissing), "{s}");
            }
        }
        assert_eq!(
            moe_testkit::decide(&c, &with_gpu).unwrap(),
            Decision::Run,
            "{name} must run plain f32 SwiGLU on a machine with a GPU"
        );
    }
    let mut c = MoeConfig::new(8, 32, 48, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
    c.backend = Some("no-such-backend".into());
    assert!(
        moe_testkit::decide(&c, &env).is_err(),
        "an unknown name is an error, not a skip"
    );
}
