//! Capabilities of the host backends and the capability gate derived from them.
//!
//! `can_implement` checks a problem against the declared [`Capabilities`] data and the
//! per-format activation dtypes ([`QUANT_DTYPES`]), so the capability table and the gate
//! cannot disagree. The gate is pure: it reads only the problem and the deployment, never the
//! machine, and abstains (accepts) on unknown (`None`) fields.

use moe_core::{
    Activation, Capabilities, DType, Eligibility, FORMATS, MoeDeployment, MoeProblem, QuantAlgo, RejectReason,
};

/// Activation dtypes the host backends run each quant format with: every format of
/// `moe_core::FORMATS` with its descriptor's `dtypes` (the host kernels compute in f32
/// whatever the format, so these follow the formats' models rather than a kernel limit; each
/// descriptor says why). Built from the descriptors at compile time, so a new format reaches
/// the host backends' capability table and gate without an edit here.
pub const QUANT_DTYPES: &[(QuantAlgo, &[DType])] = &HOST_TABLE;

const HOST_TABLE: [(QuantAlgo, &[DType]); FORMATS.len()] = {
    let mut table: [(QuantAlgo, &[DType]); FORMATS.len()] = [(QuantAlgo::None, &[]); FORMATS.len()];
    let mut i = 0;
    while i < FORMATS.len() {
        table[i] = (FORMATS[i].algo, FORMATS[i].dtypes);
        i += 1;
    }
    table
};

/// The activation dtypes of `algo` on the host backends (none for a format not listed).
pub fn quant_dtypes(algo: QuantAlgo) -> &'static [DType] {
    dtypes_in(QUANT_DTYPES, algo)
}

/// The activation dtypes `table` lists for `algo` (none for a format it does not list).
pub(crate) fn dtypes_in(table: &'static [(QuantAlgo, &'static [DType])], algo: QuantAlgo) -> &'static [DType] {
    table.iter().find(|(a, _)| *a == algo).map_or(&[], |(_, d)| d)
}

/// Capabilities of a backend that runs every activation, bias, weight-on-input, EPLB slots,
/// uneven EP and TP, on `device`, for the formats of `table` (every backend today: they differ
/// only in where they compute and which formats they decode).
pub(crate) fn full_capabilities(device: &str, table: &[(QuantAlgo, &[DType])]) -> Capabilities {
    Capabilities {
        device: device.into(),
        quant: table.iter().map(|(q, _)| *q).collect(),
        dtypes: vec![DType::F32, DType::F16, DType::BF16],
        activations: [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2]
            .iter()
            .map(|a| a.name().to_string())
            .collect(),
        supports_bias: true,
        // The scheduler scales the input and passes no routing weights; the experts need
        // nothing special for it.
        supports_apply_router_weight_on_input: true,
        supports_eplb: true,
        supports_non_divisible_ep: true,
        supports_tp: true,
    }
}

/// What the reference and CPU backends can run.
pub fn host_capabilities() -> Capabilities {
    full_capabilities("cpu", QUANT_DTYPES)
}

/// The verdict of a backend called `backend` with capabilities `caps` on a problem.
pub fn check(backend: &str, caps: &Capabilities, problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility {
    let list = |v: &[String]| v.join(", ");
    if !caps.quant.contains(&problem.quant) {
        let supported: Vec<String> = caps.quant.iter().map(|q| q.as_str().to_string()).collect();
        return Eligibility::no(
            RejectReason::QuantUnsupported,
            format!(
                "backend `{backend}` does not run quant format `{}` (supported: {})",
                problem.quant.as_str(),
                list(&supported)
            ),
        );
    }
    if !caps.dtypes.contains(&problem.dtype_act) {
        let supported: Vec<String> = caps.dtypes.iter().map(|d| d.to_string()).collect();
        return Eligibility::no(
            RejectReason::DtypeUnsupported,
            format!(
                "backend `{backend}` does not run {} activations (supported: {})",
                problem.dtype_act,
                list(&supported)
            ),
        );
    }
    let format_dtypes = quant_dtypes(problem.quant);
    if !format_dtypes.contains(&problem.dtype_act) {
        let supported: Vec<String> = format_dtypes.iter().map(|d| d.to_string()).collect();
        return Eligibility::no(
            RejectReason::DtypeUnsupported,
            format!(
                "backend `{backend}` runs quant format `{}` on {} activations, not {}",
                problem.quant.as_str(),
                list(&supported),
                problem.dtype_act
            ),
        );
    }
    if !caps.activations.contains(&problem.activation) {
        return Eligibility::no(
            RejectReason::ActivationUnsupported,
            format!(
                "backend `{backend}` has no activation `{}` (supported: {})",
                problem.activation,
                list(&caps.activations)
            ),
        );
    }
    if problem.bias == Some(true) && !caps.supports_bias {
        return Eligibility::no(
            RejectReason::PathNotEnabled,
            format!("backend `{backend}` has no expert bias"),
        );
    }
    if problem.apply_router_weight_on_input && !caps.supports_apply_router_weight_on_input {
        return Eligibility::no(
            RejectReason::PathNotEnabled,
            format!("backend `{backend}` cannot apply the router weight on the input"),
        );
    }
    check_deployment(backend, caps, problem, deployment)
}

fn check_deployment(backend: &str, caps: &Capabilities, problem: &MoeProblem, d: &MoeDeployment) -> Eligibility {
    if d.tp_size > 1 && !caps.supports_tp {
        return Eligibility::no(
            RejectReason::TopologyUnsupported,
            format!("backend `{backend}` has no MoE TP"),
        );
    }
    if let Some(i) = problem
        .intermediate_size
        .filter(|i| i.checked_rem(d.tp_size).is_some_and(|r| r > 0))
    {
        return Eligibility::no(
            RejectReason::ShapeUnaligned,
            format!("intermediate_size {i} does not divide by tp_size {}", d.tp_size),
        );
    }
    if d.eplb_enabled && !caps.supports_eplb {
        return Eligibility::no(
            RejectReason::EplbUnsupported,
            format!("backend `{backend}` has no EPLB slots"),
        );
    }
    if d.ep_size > d.num_slots {
        return Eligibility::no(
            RejectReason::TopologyUnsupported,
            format!("{} slots cannot be spread over {} EP ranks", d.num_slots, d.ep_size),
        );
    }
    if d.num_slots.checked_rem(d.ep_size).is_some_and(|r| r > 0) {
        // EPLB slot tables need equal shares; plain experts may be split unevenly if the
        // backend opted in.
        if d.eplb_enabled || !caps.supports_non_divisible_ep {
            return Eligibility::no(
                RejectReason::SlotsNotDivisibleByEp,
                format!("{} slots do not divide by ep_size {}", d.num_slots, d.ep_size),
            );
        }
    }
    Eligibility::ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{MoeConfig, MoeEnvironment, RoutingMethod};

    fn env() -> MoeEnvironment {
        MoeEnvironment {
            cpu_threads: 2,
            cuda_sm: None,
            available_deps: vec![],
        }
    }

    fn verdict(c: &MoeConfig) -> Eligibility {
        check(
            "cpu",
            &host_capabilities(),
            &MoeProblem::from_config(c),
            &MoeDeployment::from_config(c, env()),
        )
    }

    fn reason(e: Eligibility) -> Option<RejectReason> {
        match e {
            Eligibility::Ok => None,
            Eligibility::No { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn declared_activations_are_the_three_names() {
        assert_eq!(
            host_capabilities().activations,
            vec!["swiglu", "swiglu_gptoss", "relu2"]
        );
    }

    #[test]
    fn gate_verdicts() {
        let base = MoeConfig::new(8, 16, 32, DType::BF16, RoutingMethod::Renormalize { top_k: 2 });
        assert_eq!(verdict(&base), Eligibility::Ok);

        // Every format on bf16; FP8 block and MXFP4 refuse f16, naming format and dtype.
        for algo in QuantAlgo::ALL {
            let mut c = base.clone();
            c.quant.algo = algo;
            assert_eq!(verdict(&c), Eligibility::Ok, "{algo:?}");
            c.dtype = DType::F16;
            let refused = matches!(algo, QuantAlgo::Fp8Block | QuantAlgo::W4A16Mxfp4);
            match verdict(&c) {
                Eligibility::No { reason, detail } => {
                    assert!(refused, "{algo:?}: {detail}");
                    assert_eq!(reason, RejectReason::DtypeUnsupported);
                    assert!(detail.contains(algo.as_str()) && detail.contains("f16"), "{detail}");
                }
                Eligibility::Ok => assert!(!refused, "{algo:?} on f16 must be refused"),
            }
        }

        let mut p = MoeProblem::from_config(&base);
        p.dtype_act = DType::F8E4M3;
        let d = MoeDeployment::from_config(&base, env());
        assert_eq!(
            reason(check("cpu", &host_capabilities(), &p, &d)),
            Some(RejectReason::DtypeUnsupported)
        );
        p.dtype_act = DType::F16;
        p.activation = "gelu".into();
        assert_eq!(
            reason(check("cpu", &host_capabilities(), &p, &d)),
            Some(RejectReason::ActivationUnsupported)
        );

        // Uneven EP over plain experts is fine; uneven EPLB slot tables are not.
        let mut c = base.clone();
        c.parallel.ep_size = 3;
        assert_eq!(verdict(&c), Eligibility::Ok);
        c.eplb = Some(moe_core::EplbConfig {
            num_slots: 10,
            layer_updates_per_iter: 0,
            initial_global_assignments: None,
        });
        assert_eq!(reason(verdict(&c)), Some(RejectReason::SlotsNotDivisibleByEp));
        c.parallel.ep_size = 16;
        assert_eq!(reason(verdict(&c)), Some(RejectReason::TopologyUnsupported));

        let mut c = base.clone();
        c.parallel.tp_size = 3;
        assert_eq!(reason(verdict(&c)), Some(RejectReason::ShapeUnaligned));
        c.parallel.tp_size = 4;
        c.bias = true;
        c.activation = Activation::GPT_OSS;
        assert_eq!(verdict(&c), Eligibility::Ok);
    }

    /// A device backend keeps its own table (which formats its kernels decode, on which
    /// dtypes), checked against the descriptors: every entry is a format it lists once, in
    /// `FORMATS` order, on a subset of the format's dtypes.
    fn check_device_table(name: &str, table: &[(QuantAlgo, &[DType])]) {
        let mut last = None;
        for (algo, dtypes) in table {
            let pos = QuantAlgo::ALL.iter().position(|a| a == algo).unwrap();
            assert!(
                last.is_none_or(|l| l < pos),
                "{name}: {algo:?} out of FORMATS order or listed twice"
            );
            last = Some(pos);
            assert!(!dtypes.is_empty(), "{name}: {algo:?} lists no dtype");
            for d in *dtypes {
                assert!(
                    algo.descriptor().dtypes.contains(d),
                    "{name}: {algo:?} on {d}, which the format's descriptor does not run"
                );
            }
        }
    }

    #[test]
    fn dtype_tables_follow_the_format_descriptors() {
        assert_eq!(QUANT_DTYPES.len(), FORMATS.len());
        for (d, (algo, dtypes)) in FORMATS.iter().zip(QUANT_DTYPES) {
            assert_eq!((d.algo, d.dtypes), (*algo, *dtypes));
        }
        check_device_table("host", QUANT_DTYPES);
        check_device_table("cuda", crate::cuda::CUDA_QUANT_DTYPES);
    }

    #[test]
    fn unknown_fields_abstain() {
        let base = MoeConfig::new(8, 16, 32, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
        let mut p = MoeProblem::from_config(&base);
        p.intermediate_size = None;
        p.bias = None;
        p.num_experts = None;
        let mut d = MoeDeployment::from_config(&base, env());
        d.tp_size = 3;
        assert_eq!(check("cpu", &host_capabilities(), &p, &d), Eligibility::Ok);
    }
}
