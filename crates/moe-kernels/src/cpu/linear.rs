//! Dense linear layers on the host for the model-side projections (router gate, shared
//! experts): [`linear`] on weights of any float dtype through the GEMM of [`super::gemm`],
//! and the plain f32 loop [`linear_f32`].

use moe_core::{MoeError, Result};
use rayon::prelude::*;

use super::float_slice::FloatSlice;
use super::gemm::{GemmScratch, matmul_bt};

/// `out[t, j] = sum_i x[t, i] * w[j, i] + b[j]` for `x [t, k]` f32 and `w [n, k]`, `b [n]` in
/// their stored dtypes (no f32 copy of the weight); f32 accumulation on all of the caller's
/// rayon workers.
pub fn linear(
    x: &[f32],
    w: FloatSlice<'_>,
    b: Option<FloatSlice<'_>>,
    t: usize,
    k: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; t * n];
    matmul_bt(
        x,
        w.into(),
        &mut out,
        t,
        n,
        k,
        rayon::current_num_threads(),
        &mut GemmScratch::default(),
    )?;
    if let Some(b) = b {
        if b.len() != n {
            return Err(MoeError::shape("linear bias", format!("[{n}]"), &[b.len()]));
        }
        let mut bias = vec![0.0f32; n];
        b.widen_into(0, &mut bias)?;
        for row in out.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(&bias).for_each(|(o, b)| *o += b);
        }
    }
    Ok(out)
}

/// `out[t, j] = sum_i x[t, i] * w[j, i] + b[j]`, f32 accumulation, as plain loops.
pub fn linear_f32(x: &[f32], w: &[f32], b: Option<&[f32]>, t: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; t * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n).enumerate().for_each(|(row, o)| {
        let xr = &x[row * k..(row + 1) * k];
        for (j, oj) in o.iter_mut().enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = 0.0f32;
            for (a, c) in xr.iter().zip(wr) {
                acc += a * c;
            }
            *oj = acc + b.map_or(0.0, |b| b[j]);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_linear_by_hand() {
        // x = [[1, 2]], w = [[3, 4], [5, 6], [7, 8]], b = [1, 0, -1]
        let y = linear_f32(&[1., 2.], &[3., 4., 5., 6., 7., 8.], Some(&[1., 0., -1.]), 1, 2, 3);
        assert_eq!(y, vec![12., 17., 22.]);
        let b = [1., 0., -1.];
        let y = linear(
            &[1., 2.],
            FloatSlice::F32(&[3., 4., 5., 6., 7., 8.]),
            Some(FloatSlice::F32(&b)),
            1,
            2,
            3,
        );
        assert_eq!(y.unwrap(), vec![12., 17., 22.]);
    }

    #[test]
    fn gemm_linear_matches_loops_on_bf16_weights() {
        let (t, k, n) = (9, 33, 7);
        let x: Vec<f32> = (0..t * k).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let w: Vec<half::bf16> = (0..n * k)
            .map(|i| half::bf16::from_f32(((i * 11 % 13) as f32 - 6.0) / 4.0))
            .collect();
        let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
        let want = linear_f32(&x, &wf, None, t, k, n);
        let got = linear(&x, FloatSlice::BF16(&w), None, t, k, n).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        assert!(linear(&x, FloatSlice::BF16(&w), Some(FloatSlice::F32(&[0.0; 3])), t, k, n).is_err());
    }
}
