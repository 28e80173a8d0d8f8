//! The CUDA backend on the transformers fixtures (built with `--features cuda`, run on the GPU
//! machine from the bundle): every family x dtype x T, chunked and not, and the quantized
//! fixtures, against the transformers outputs AND against the reference backend on the same
//! inputs. Each block must resolve to `cuda` (a silent fallback to the CPU would prove
//! nothing).

use moe_core::DType;
use moe_hf::{BlockOptions, MoeBlock};

use crate::common::{FAMILIES, TOKENS, fixture, io_tensor, rel_l2, tolerance};
use crate::quant::quant_fixture;

fn block(dir: &std::path::Path, backend: &str, chunk: Option<usize>) -> MoeBlock {
    let opts = BlockOptions {
        backend: Some(backend.into()),
        max_tokens_per_chunk: chunk,
        ..Default::default()
    };
    let b = MoeBlock::load(dir, 0, opts).unwrap_or_else(|e| panic!("{} [{backend}] load: {e}", dir.display()));
    assert_eq!(
        b.backend_name(),
        backend,
        "{}: resolved to {} ({:?})",
        dir.display(),
        b.backend_name(),
        b.report()
    );
    b
}

/// Worst error against transformers and against the reference backend, over T and chunking.
fn check(dir: &std::path::Path, name: &str, oracle_tol: f64, ref_tol: f64) -> (f64, f64) {
    let mut reference = block(dir, "reference", None);
    let mut cudas = [block(dir, "cuda", None), block(dir, "cuda", Some(16))];
    let (mut worst_oracle, mut worst_ref) = (0.0f64, 0.0f64);
    for t in TOKENS {
        let x = io_tensor(dir, &format!("x_{t}"));
        let y_hf = io_tensor(dir, &format!("y_{t}"));
        let y_ref = reference
            .forward(&x)
            .unwrap_or_else(|e| panic!("{name} [reference] T={t}: {e}"));
        for (i, c) in cudas.iter_mut().enumerate() {
            let y = c
                .forward(&x)
                .unwrap_or_else(|e| panic!("{name} [cuda #{i}] T={t}: {e}"));
            assert_eq!(y.dtype(), x.dtype(), "{name}: output dtype");
            let (e_hf, e_ref) = (rel_l2(&y, &y_hf), rel_l2(&y, &y_ref));
            eprintln!(
                "{name} [cuda, chunk {}] T={t}: vs transformers {e_hf:.3e}, vs reference {e_ref:.3e}",
                [0, 16][i]
            );
            assert!(
                e_hf <= oracle_tol,
                "{name} T={t}: {e_hf:.3e} vs transformers > {oracle_tol:.0e}"
            );
            assert!(
                e_ref <= ref_tol,
                "{name} T={t}: {e_ref:.3e} vs reference > {ref_tol:.0e}"
            );
            worst_oracle = worst_oracle.max(e_hf);
            worst_ref = worst_ref.max(e_ref);
        }
    }
    (worst_oracle, worst_ref)
}

#[test]
fn cuda_matches_transformers_and_reference_on_every_fixture() {
    for family in FAMILIES {
        for dtype in ["float32", "bfloat16"] {
            let name = format!("{family}-{dtype}");
            // f32 runs in f32 on the device (GEMV kernels, FMA order differs from the host):
            // the reference agrees to f32 rounding. bf16 runs on the tensor cores with bf16
            // intermediates: within the fixtures' bf16 bound of the oracle.
            let ref_tol = if dtype == "float32" { 1e-5 } else { 3e-2 };
            let (o, r) = check(&fixture(&name), &name, tolerance(&name), ref_tol);
            eprintln!("{name}: worst vs transformers {o:.3e}, vs reference {r:.3e}");
        }
    }
}

#[test]
fn cuda_runs_the_quantized_fixtures_packed() {
    for (name, tol) in [("deepseek_v3-fp8block", 5e-2), ("gpt_oss-mxfp4", 3e-2)] {
        let dir = quant_fixture(name);
        let b = block(&dir, "cuda", None);
        assert_eq!(b.dtype(), DType::BF16);
        let (o, r) = check(&dir, name, tol, 3e-2);
        eprintln!("{name}: worst vs transformers {o:.3e}, vs reference {r:.3e}");
    }
}
