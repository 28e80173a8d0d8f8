//! Lifecycle order and malformed inputs: typed errors naming what is wrong, never panics.

use moe_backends::{CpuBackend, ReferenceBackend};
use moe_core::{DType, ExpertPartition, MoeBackend, MoeConfig, MoeError, MoeRunContext, Tensor};

use crate::common::{activations, checkpoint, config, loaded, run};

fn backends(c: &MoeConfig) -> Vec<Box<dyn MoeBackend>> {
    let p = || ExpertPartition::compute(c, true).unwrap();
    vec![
        Box::new(CpuBackend::create(c, p()).unwrap()),
        Box::new(ReferenceBackend::create(c, p()).unwrap()),
    ]
}

fn ctx<'a>(x: &'a Tensor, ids: &'a Tensor, w: Option<&'a Tensor>) -> MoeRunContext<'a> {
    MoeRunContext {
        x,
        x_sf: None,
        token_selected_slots: ids,
        token_final_scales: w,
        output_dtype: x.dtype(),
        all_rank_num_tokens: None,
        comm_plan: None,
    }
}

fn is_lifecycle(r: moe_core::Result<Tensor>) -> bool {
    matches!(r, Err(MoeError::Lifecycle { .. }))
}

#[test]
fn lifecycle_order_is_enforced() {
    let c = config(4, 8, 8, 2, DType::F32);
    let src = checkpoint(&c, 1);
    let x = activations(3, 8, DType::F32, 1);
    let ids = Tensor::from_i32(vec![3, 2], vec![0, 1, 2, 3, 1, 0]).unwrap();
    for mut b in backends(&c) {
        let name = b.name();
        assert!(
            is_lifecycle(b.run_moe(&ctx(&x, &ids, None))),
            "{name}: run before create_weights"
        );
        assert!(
            matches!(b.load_weights(&src, false), Err(MoeError::Lifecycle { .. })),
            "{name}"
        );
        b.create_weights().unwrap();
        assert!(is_lifecycle(b.run_moe(&ctx(&x, &ids, None))), "{name}: run before load");

        // Partial load of experts 0..2 only: not runnable, processing names slot 2.
        let mut partial = moe_core::MemoryWeights::new();
        for n in ["0", "1"] {
            for p in ["w1", "w2", "w3"] {
                let key = format!("{n}.{p}.weight");
                partial.insert(key.clone(), src.tensor(&key).unwrap().clone());
            }
        }
        b.load_weights(&partial, true).unwrap();
        assert!(
            is_lifecycle(b.run_moe(&ctx(&x, &ids, None))),
            "{name}: run after a partial load"
        );
        let err = b.process_weights_after_loading().unwrap_err().to_string();
        assert!(err.contains("slot 2 (expert 2)"), "{name}: {err}");

        b.load_weights(&src, true).unwrap();
        b.process_weights_after_loading().unwrap();
        b.post_load_weights().unwrap();
        b.post_load_weights().unwrap(); // idempotent
        let first = b.run_moe(&ctx(&x, &ids, None)).unwrap();

        // Reloading needs pre_reload_weights; afterwards the layer is not runnable until
        // the new weights are processed.
        assert!(
            matches!(b.load_weights(&src, false), Err(MoeError::Lifecycle { .. })),
            "{name}"
        );
        b.pre_reload_weights().unwrap();
        assert!(
            is_lifecycle(b.run_moe(&ctx(&x, &ids, None))),
            "{name}: run after pre_reload"
        );
        assert!(b.expert_weights().loaded.iter().all(|l| !l));
        b.load_weights(&src, false).unwrap();
        let again = b.run_moe(&ctx(&x, &ids, None)).unwrap();
        assert_eq!(first.as_f32("a").unwrap(), again.as_f32("b").unwrap(), "{name}");
    }
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let c = config(4, 8, 8, 2, DType::BF16);
    let src = checkpoint(&c, 2);
    let cpu: CpuBackend = loaded(&c, &src);
    let reference: ReferenceBackend = loaded(&c, &src);
    let x = activations(3, 8, DType::BF16, 1);
    let ids = Tensor::from_i32(vec![3, 2], vec![0, 1, 2, 3, 1, 0]).unwrap();
    let w = Tensor::from_f32(vec![3, 2], vec![1.0; 6]).unwrap();
    for b in [&cpu as &dyn MoeBackend, &reference] {
        let name = b.name();
        // x dtype must be the layer dtype.
        let x32 = activations(3, 8, DType::F32, 1);
        match b.run_moe(&ctx(&x32, &ids, Some(&w))) {
            Err(MoeError::DTypeMismatch { what, .. }) => assert_eq!(what, "x"),
            other => panic!("{name}: {other:?}"),
        }
        // x must be [N, H].
        let wide = activations(3, 9, DType::BF16, 1);
        match b.run_moe(&ctx(&wide, &ids, Some(&w))) {
            Err(MoeError::ShapeMismatch { what, .. }) => assert_eq!(what, "x"),
            other => panic!("{name}: {other:?}"),
        }
        // slots must be [N, k] i32.
        let ids_k3 = Tensor::from_i32(vec![2, 3], vec![0; 6]).unwrap();
        match b.run_moe(&ctx(&x, &ids_k3, None)) {
            Err(MoeError::ShapeMismatch { what, .. }) => assert_eq!(what, "token_selected_slots"),
            other => panic!("{name}: {other:?}"),
        }
        let ids_f = Tensor::from_f32(vec![3, 2], vec![0.0; 6]).unwrap();
        match b.run_moe(&ctx(&x, &ids_f, None)) {
            Err(MoeError::DTypeMismatch { what, .. }) => assert_eq!(what, "token_selected_slots"),
            other => panic!("{name}: {other:?}"),
        }
        // scales must be [N, k] f32.
        let w_bad = Tensor::from_f32(vec![3, 1], vec![1.0; 3]).unwrap();
        match b.run_moe(&ctx(&x, &ids, Some(&w_bad))) {
            Err(MoeError::ShapeMismatch { what, .. }) => assert_eq!(what, "token_final_scales"),
            other => panic!("{name}: {other:?}"),
        }
        let w_i = Tensor::from_i32(vec![3, 2], vec![1; 6]).unwrap();
        match b.run_moe(&ctx(&x, &ids, Some(&w_i))) {
            Err(MoeError::DTypeMismatch { what, .. }) => assert_eq!(what, "token_final_scales"),
            other => panic!("{name}: {other:?}"),
        }
        // Slot ids outside 0..num_slots name the token.
        for bad in [-1, 4] {
            let ids_bad = Tensor::from_i32(vec![3, 2], vec![0, 1, 2, 3, bad, 0]).unwrap();
            let err = b.run_moe(&ctx(&x, &ids_bad, Some(&w))).unwrap_err().to_string();
            assert!(
                err.contains(&format!("token 2, selection 0: slot id {bad}")),
                "{name}: {err}"
            );
        }
        // Activation scales make no sense for an unquantized layer.
        let mut with_sf = ctx(&x, &ids, Some(&w));
        with_sf.x_sf = Some(&w);
        assert!(
            matches!(b.run_moe(&with_sf), Err(MoeError::DTypeMismatch { .. })),
            "{name}"
        );
        // The output dtype must be a float type.
        let mut to_int = ctx(&x, &ids, Some(&w));
        to_int.output_dtype = DType::I32;
        assert!(
            matches!(b.run_moe(&to_int), Err(MoeError::DTypeMismatch { .. })),
            "{name}"
        );
    }
}

#[test]
fn quantize_input_is_the_identity() {
    let c = config(4, 8, 8, 2, DType::F16);
    let cpu: CpuBackend = loaded(&c, &checkpoint(&c, 3));
    let x = activations(2, 8, DType::F16, 4);
    let q = cpu.quantize_input(&x).unwrap();
    assert!(q.x_sf.is_none());
    assert_eq!(q.x.to_f32_vec("q").unwrap(), x.to_f32_vec("x").unwrap());
    // and the result runs
    let ids = [0, 1, 2, 3];
    assert_eq!(run(&cpu, &q.x, &ids, None, DType::F16).len(), 16);
}
