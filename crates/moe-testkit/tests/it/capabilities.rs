//! The capability table in `docs/MOE_DEVELOPER_GUIDE.md` is the one `declared_capabilities()`
//! generates today (regenerate with `cargo xtask codegen`).

use moe_testkit::capabilities::{capability_table, generated_section, guide_path, splice};

#[test]
fn capability_table_is_fresh() {
    let path = guide_path();
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let committed = generated_section(&doc).expect("the guide lacks the capability-table markers");
    assert_eq!(
        committed,
        capability_table().trim(),
        "the capability table in {} is stale: run `cargo xtask codegen`",
        path.display()
    );
}

#[test]
fn table_has_one_row_per_registered_backend() {
    let table = capability_table();
    for name in moe::BACKEND_NAMES {
        assert!(table.contains(&format!("| `{name}` |")), "no row for {name}:\n{table}");
    }
}

#[test]
fn splicing_is_idempotent() {
    let doc = format!(
        "intro\n{}\nold\n{}\noutro\n",
        moe_testkit::capabilities::BEGIN_MARKER,
        moe_testkit::capabilities::END_MARKER
    );
    let once = splice(&doc, "| new |").unwrap();
    assert_eq!(splice(&once, "| new |").unwrap(), once);
    assert_eq!(generated_section(&once), Some("| new |"));
    assert!(once.starts_with("intro\n") && once.ends_with("outro\n"));
    assert_eq!(splice("no markers", "x"), None);
}

/// This machine's environment with the device of every registered backend present (CUDA as
/// compute capability 9.0). `can_implement` reads only the frozen environment, never the
/// machine, so a device backend's gate is probed here on a machine without the device too.
fn with_every_device(mut env: moe_core::MoeEnvironment) -> moe_core::MoeEnvironment {
    for entry in moe::REGISTRY {
        let device = (entry.capabilities)().device;
        if device != "cpu" && !env.available_deps.contains(&device) {
            env.available_deps.push(device);
        }
    }
    if env.available_deps.iter().any(|d| d == "cuda") {
        env.cuda_sm.get_or_insert(90);
    }
    env
}

/// Every row of the capability table says what the backend's `can_implement` does: each
/// declared capability is probed with a problem that needs exactly it, on top of a problem
/// the backend accepts. A table that claims more (or less) than the gate fails here.
#[test]
fn declared_capabilities_agree_with_can_implement() {
    use moe_core::{Activation, DType, EplbConfig, MoeConfig, MoeDeployment, MoeProblem, QuantAlgo, RoutingMethod};
    let env = with_every_device(moe::probe_environment());
    let mut lies = Vec::new();
    for entry in moe::REGISTRY {
        let caps = (entry.capabilities)();
        let accepts = |c: &MoeConfig| {
            let p = MoeProblem::from_config(c);
            let d = MoeDeployment::from_config(c, env.clone());
            (entry.can_implement)(&p, &d).is_ok()
        };
        let dtype = caps.dtypes.first().copied().unwrap_or(DType::F32);
        let base = MoeConfig::new(8, 128, 128, dtype, RoutingMethod::Renormalize { top_k: 2 });
        assert!(accepts(&base), "{} rejects a plain {dtype} SwiGLU layer", entry.name);
        let mut check = |what: String, claimed: bool, c: &MoeConfig| {
            if accepts(c) != claimed {
                lies.push(format!(
                    "{}: declares {what} = {claimed}, can_implement says {}",
                    entry.name, !claimed
                ));
            }
        };
        for d in [DType::F32, DType::F16, DType::BF16] {
            check(
                format!("dtype {d}"),
                caps.dtypes.contains(&d),
                &MoeConfig {
                    dtype: d,
                    ..base.clone()
                },
            );
        }
        // A format counts as run when some declared dtype runs it: formats may be limited to
        // some activation dtypes (`QUANT_DTYPES`, `CUDA_QUANT_DTYPES`), which the table's
        // separate quant and dtype columns cannot say.
        for q in QuantAlgo::ALL {
            let configs: Vec<MoeConfig> = caps
                .dtypes
                .iter()
                .map(|&d| {
                    let mut c = MoeConfig {
                        dtype: d,
                        ..base.clone()
                    };
                    c.quant.algo = q;
                    c.quant.weight_block_size = (q == QuantAlgo::Fp8Block).then_some([128, 128]);
                    c.quant.group_size = (q == QuantAlgo::W4A16Int4).then_some(128);
                    c
                })
                .collect();
            // The config the gate accepts if there is one, else any (all are refused).
            let probe = configs.iter().find(|c| accepts(c)).unwrap_or(&configs[0]);
            check(format!("quant {}", q.as_str()), caps.quant.contains(&q), probe);
        }
        for a in [Activation::Swiglu, Activation::GPT_OSS, Activation::Relu2] {
            let claimed = caps.activations.iter().any(|n| n == a.name());
            check(
                format!("activation {}", a.name()),
                claimed,
                &MoeConfig {
                    activation: a,
                    ..base.clone()
                },
            );
        }
        check(
            "bias".into(),
            caps.supports_bias,
            &MoeConfig {
                bias: true,
                ..base.clone()
            },
        );
        let top1 = MoeConfig {
            routing: RoutingMethod::Llama4 { top_k: 1 },
            ..base.clone()
        };
        if accepts(&top1) {
            let woi = MoeConfig {
                apply_router_weight_on_input: true,
                ..top1
            };
            check(
                "weight on input".into(),
                caps.supports_apply_router_weight_on_input,
                &woi,
            );
        }
        let mut tp = base.clone();
        tp.parallel.tp_size = 2;
        check("TP".into(), caps.supports_tp, &tp);
        let mut eplb = base.clone();
        eplb.parallel.ep_size = 2;
        eplb.eplb = Some(EplbConfig {
            num_slots: 12,
            layer_updates_per_iter: 0,
            initial_global_assignments: None,
        });
        check("EPLB".into(), caps.supports_eplb, &eplb);
        let mut uneven = MoeConfig::new(7, 128, 128, dtype, RoutingMethod::Renormalize { top_k: 2 });
        uneven.parallel.ep_size = 2;
        check("non-divisible EP".into(), caps.supports_non_divisible_ep, &uneven);
    }
    assert!(
        lies.is_empty(),
        "the capability table disagrees with the gates:\n{}",
        lies.join("\n")
    );
}
