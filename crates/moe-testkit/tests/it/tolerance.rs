//! The accuracy helpers on hand-made vectors, including the edges of `percent`.

use moe_core::{DType, QuantAlgo};
use moe_testkit::tolerance::{Tolerance, check_accuracy, quant_tolerance, rel_l2, rel_l2_bound};

#[test]
fn identical_vectors_pass_with_zero_error() {
    let v = [1.0f32, -2.0, 3.5, 0.0];
    let r = check_accuracy(&v, &v, Tolerance::close(0.0, 0.0)).unwrap();
    assert_eq!(r.mismatches, 0);
    assert_eq!(r.max_abs_diff, 0.0);
    assert_eq!(r.rel_l2, 0.0);
}

#[test]
fn mismatch_is_atol_plus_rtol_times_reference() {
    let reference = [10.0f32, 10.0, 10.0, 10.0];
    // atol 0.1 + rtol 0.01 * 10 = 0.2: 0.19 is inside, 0.21 is outside.
    let out = [10.19f32, 9.81, 10.21, 10.0];
    let tol = Tolerance::new(0.01, 0.1, 0.5);
    let r = check_accuracy(&out, &reference, tol).unwrap();
    assert_eq!(r.mismatches, 1);
    assert_eq!(r.worst_index, 2);
    assert!((r.mismatch_fraction - 0.25).abs() < 1e-12);
}

#[test]
fn percent_is_a_strict_bound_on_the_mismatch_fraction() {
    let reference = [0.0f32; 4];
    let out = [1.0f32, 0.0, 0.0, 0.0]; // 25% mismatch
    assert!(
        check_accuracy(&out, &reference, Tolerance::new(0.0, 0.5, 0.70)).is_ok(),
        "0.25 < 1 - 0.70"
    );
    assert!(
        check_accuracy(&out, &reference, Tolerance::new(0.0, 0.5, 0.75)).is_err(),
        "0.25 is not < 1 - 0.75"
    );
}

#[test]
fn percent_rejects_too_many_mismatches() {
    let reference = [0.0f32; 4];
    let out = [1.0f32, 1.0, 0.0, 0.0]; // 50% mismatch
    let err = check_accuracy(&out, &reference, Tolerance::new(0.0, 0.5, 0.96)).unwrap_err();
    assert!(err.contains("2/4 elements"), "{err}");
}

#[test]
fn assert_close_admits_no_mismatch() {
    let reference = vec![1.0f32; 1000];
    let mut out = reference.clone();
    out[999] = 2.0;
    assert!(check_accuracy(&out, &reference, Tolerance::close(0.01, 0.01)).is_err());
}

#[test]
fn non_finite_and_length_mismatch_never_pass() {
    let loose = Tolerance::new(1e9, 1e9, 0.0);
    assert!(check_accuracy(&[f32::NAN], &[1.0], loose).is_err());
    assert!(check_accuracy(&[1.0], &[f32::INFINITY], loose).is_err());
    assert!(check_accuracy(&[1.0, 2.0], &[1.0], loose).is_err());
}

#[test]
fn rel_l2_matches_a_hand_computation() {
    // ||(3, 4) - (0, 0)|| / ||(3, 4)|| = 1; ||(1, 1) - (1, 0)|| / ||(1, 0)|| = 1.
    assert_eq!(rel_l2(&[0.0, 0.0], &[3.0, 4.0]), 1.0);
    let e = rel_l2(&[3.0, 4.1], &[3.0, 4.0]);
    assert!((e - 0.1 / 5.0).abs() < 1e-6, "{e}");
    assert_eq!(rel_l2(&[0.0], &[0.0]), 0.0);
    assert!(rel_l2(&[1.0], &[0.0]).is_infinite());
    assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan());
    assert!(rel_l2(&[1.0, 2.0], &[1.0]).is_nan());
}

#[test]
fn tables_cover_every_quant_algo_and_dtype() {
    for algo in QuantAlgo::ALL {
        let t = quant_tolerance(algo);
        assert!(
            t.percent > 0.0 && t.percent <= 1.0 && t.rtol >= 0.0 && t.atol > 0.0,
            "{algo:?}: {t:?}"
        );
    }
    assert_eq!(quant_tolerance(QuantAlgo::None), Tolerance::new(0.2, 0.2, 0.96));
    assert_eq!(quant_tolerance(QuantAlgo::Fp8Block).percent, 1.0);
    assert_eq!(rel_l2_bound(DType::F32), 1e-5);
    assert!(rel_l2_bound(DType::F16) < rel_l2_bound(DType::BF16));
}
