//! Capability verdicts and `create` refusals of both backends.

use moe_backends::{CpuBackend, ReferenceBackend};
use moe_core::{
    Activation, DType, Eligibility, EplbConfig, ExpertPartition, MoeBackend, MoeDeployment, MoeEnvironment, MoeError,
    MoeProblem, QuantAlgo, RejectReason,
};

use crate::common::config;

fn env() -> MoeEnvironment {
    MoeEnvironment {
        cpu_threads: 2,
        cuda_sm: None,
        available_deps: vec![],
    }
}

fn verdicts(c: &moe_core::MoeConfig) -> [Eligibility; 2] {
    let (p, d) = (MoeProblem::from_config(c), MoeDeployment::from_config(c, env()));
    [
        CpuBackend::can_implement(&p, &d),
        ReferenceBackend::can_implement(&p, &d),
    ]
}

#[test]
fn both_backends_declare_the_same_capabilities() {
    let caps = CpuBackend::declared_capabilities();
    assert_eq!(caps, ReferenceBackend::declared_capabilities());
    assert_eq!(caps.quant, QuantAlgo::ALL.to_vec());
    assert_eq!(caps.dtypes, vec![DType::F32, DType::F16, DType::BF16]);
    assert!(caps.supports_bias && caps.supports_tp && caps.supports_eplb && caps.supports_non_divisible_ep);
}

#[test]
fn every_format_is_accepted_on_its_dtypes_and_refused_on_others_naming_both() {
    for algo in QuantAlgo::ALL {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut c = config(8, 256, 256, 2, dtype);
            c.quant.algo = algo;
            let supported = moe_backends::capabilities::quant_dtypes(algo).contains(&dtype);
            for v in verdicts(&c) {
                match v {
                    Eligibility::Ok => assert!(supported, "{algo:?} on {dtype} accepted"),
                    Eligibility::No { reason, detail } => {
                        assert!(!supported, "{algo:?} on {dtype} refused: {detail}");
                        assert_eq!(reason, RejectReason::DtypeUnsupported);
                        assert!(
                            detail.contains(algo.as_str()) && detail.contains(dtype.as_str()),
                            "{detail}"
                        );
                    }
                }
            }
            let p = ExpertPartition::compute(&c, true).unwrap();
            match (CpuBackend::create(&c, p), supported) {
                (Ok(b), true) => assert_eq!(b.quant_method().algo(), algo),
                (Err(MoeError::Unsupported { backend, reason, .. }), false) => {
                    assert_eq!(backend, "cpu");
                    assert_eq!(reason, RejectReason::DtypeUnsupported);
                }
                (Err(e), _) => panic!("{algo:?} on {dtype}: unexpected error {e}"),
                (Ok(_), false) => panic!("{algo:?} on {dtype}: create must fail"),
            }
        }
    }
    // The documented exceptions: TensorRT-LLM's bf16-only FP8 block, GPT-OSS's bf16 MXFP4.
    assert!(!moe_backends::capabilities::quant_dtypes(QuantAlgo::Fp8Block).contains(&DType::F16));
    assert!(!moe_backends::capabilities::quant_dtypes(QuantAlgo::W4A16Mxfp4).contains(&DType::F16));
}

#[test]
fn supported_problems_are_accepted() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for act in [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2] {
            let mut c = config(8, 16, 16, 2, dtype);
            c.activation = act;
            c.bias = true;
            c.parallel.ep_size = 3;
            c.parallel.tp_size = 2;
            assert_eq!(verdicts(&c), [Eligibility::Ok, Eligibility::Ok], "{dtype} {act:?}");
        }
    }
    let mut c = config(8, 16, 16, 2, DType::BF16);
    c.parallel.ep_size = 2;
    c.eplb = Some(EplbConfig {
        num_slots: 10,
        layer_updates_per_iter: 0,
        initial_global_assignments: None,
    });
    assert_eq!(verdicts(&c), [Eligibility::Ok, Eligibility::Ok]);
}

#[test]
fn other_rejections_carry_their_reason() {
    let c = config(8, 16, 16, 2, DType::BF16);
    let (mut p, d) = (MoeProblem::from_config(&c), MoeDeployment::from_config(&c, env()));
    p.dtype_act = DType::I32;
    assert!(matches!(
        CpuBackend::can_implement(&p, &d),
        Eligibility::No {
            reason: RejectReason::DtypeUnsupported,
            ..
        }
    ));
    p.dtype_act = DType::BF16;
    p.activation = "geglu".into();
    assert!(matches!(
        ReferenceBackend::can_implement(&p, &d),
        Eligibility::No {
            reason: RejectReason::ActivationUnsupported,
            ..
        }
    ));

    let mut c = config(8, 16, 16, 2, DType::BF16);
    c.parallel.ep_size = 3;
    c.eplb = Some(EplbConfig {
        num_slots: 8,
        layer_updates_per_iter: 0,
        initial_global_assignments: None,
    });
    for v in verdicts(&c) {
        assert!(
            matches!(
                v,
                Eligibility::No {
                    reason: RejectReason::SlotsNotDivisibleByEp,
                    ..
                }
            ),
            "{v:?}"
        );
    }
}

#[test]
fn names_and_load_balancer_support() {
    let c = config(4, 8, 8, 1, DType::F32);
    let cpu = CpuBackend::create(&c, ExpertPartition::compute(&c, true).unwrap()).unwrap();
    let reference = ReferenceBackend::create(&c, ExpertPartition::compute(&c, true).unwrap()).unwrap();
    assert_eq!(cpu.name(), "cpu");
    assert_eq!(reference.name(), "reference");
    assert!(cpu.supports_load_balancer() && reference.supports_load_balancer());
    assert_eq!(cpu.capabilities(), CpuBackend::declared_capabilities());
    assert_eq!(cpu.quant_method().algo(), QuantAlgo::None);
    assert_eq!(cpu.layout().num_local_slots(), 4);
}
