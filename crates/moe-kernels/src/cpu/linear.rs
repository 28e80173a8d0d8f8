//! Dense f32 linear layer on the host, parallel over output rows of tokens.

use rayon::prelude::*;

/// `out[t, j] = sum_i x[t, i] * w[j, i] + b[j]`, f32 accumulation.
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
    }
}
