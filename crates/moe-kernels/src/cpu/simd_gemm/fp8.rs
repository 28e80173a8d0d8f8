//! The FP8 (E4M3) register decode: the fused few-rows kernel `micro_fp8` (codes decoded in
//! registers, each 128-column block's partial sums scaled once) and `decode_e4m3`, the
//! bit-exact tile decode of the many-rows path. A template (`fp8_kernels!`) instantiated per
//! ISA; the ISA module supplies `load_e4m3`, `e4m3_bits`, `has_nan_e4m3`, `splat` and the
//! helpers of `float.rs`.

/// Emits `micro_fp8` and `decode_e4m3` for one ISA (`$feat`: its `target_feature` list).
macro_rules! fp8_kernels {
    ($feat:literal) => {
        /// One `MR x NR` tile of `C` over all of `k` from FP8-block weight rows decoded in
        /// registers: per column block of `b1`, block sums of `A_i · e4m3_j / 2^8`, then
        /// `acc += sum * (scale * 2^8)`; columns past the last whole vector of a block go
        /// through the lookup table. A row with a NaN code gives NaN (found by a separate
        /// streaming pass over the row, which also brings it into cache: the decode loop
        /// then reads from cache rather than waiting on memory).
        ///
        /// # Safety
        /// The CPU has the ISA; `a` covers `MR` rows of `k` floats at stride `lda`, `b`
        /// `NR` rows of `k` codes at stride `ldb`, `srow` holds `ceil(k / b1)` scales whose
        /// `x 256` is finite, `c` an `MR x NR` block at stride `ldc`. `next..next + next_len`
        /// (the next row group, only prefetched) may be anything.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_fp8<const MR: usize, const NR: usize>(
            a: *const f32,
            lda: usize,
            b: *const u8,
            ldb: usize,
            k: usize,
            srow: &[f32],
            b1: usize,
            c: *mut f32,
            ldc: usize,
            next: *const u8,
            next_len: usize,
        ) {
            let mut acc = [[zero(); NR]; MR];
            let mut pf = 0;
            let mut tail = [[0.0f32; NR]; MR];
            // SAFETY: (whole body) every offset stays below `k` within its row, as the
            // contract provides.
            unsafe {
                // NaN codes first, in a plain streaming pass over each row (which also
                // pulls the rows into cache for the decode loop below).
                let mut nan = [false; NR];
                for j in 0..NR {
                    nan[j] = has_nan_e4m3(b.add(j * ldb), k);
                }
                let mut p0 = 0;
                for (cb, &s) in srow.iter().enumerate() {
                    // The last block may be partial.
                    let p1 = if cb + 1 == srow.len() { k } else { p0 + b1 };
                    let full = p0 + (p1 - p0) / LANES * LANES;
                    let mut seg = [[zero(); NR]; MR];
                    let mut p = p0;
                    while p < full {
                        let mut bw = [zero(); NR];
                        // Pull the next row group toward L2 while this one computes
                        // (this group was brought in by the NaN scan): one line per step.
                        if pf < next_len {
                            prefetch_l2(next.wrapping_add(pf));
                            pf += 64;
                        }
                        for j in 0..NR {
                            bw[j] = load_e4m3(b.add(j * ldb + p));
                        }
                        for i in 0..MR {
                            let av = load(a.add(i * lda + p));
                            for j in 0..NR {
                                seg[i][j] = fma(av, bw[j], seg[i][j]);
                            }
                        }
                        p += LANES;
                    }
                    let f = splat(s * 256.0);
                    for i in 0..MR {
                        for j in 0..NR {
                            acc[i][j] = fma(seg[i][j], f, acc[i][j]);
                            for q in full..p1 {
                                let w = crate::codec::fp8::E4M3_TO_F32[*b.add(j * ldb + q) as usize] * s;
                                tail[i][j] += *a.add(i * lda + q) * w;
                            }
                        }
                    }
                    p0 = p1;
                }
                for i in 0..MR {
                    for j in 0..NR {
                        let v = hsum(acc[i][j]) + tail[i][j];
                        *c.add(i * ldc + j) = if nan[j] { f32::NAN } else { v };
                    }
                }
            }
        }

        /// Decodes the longest whole-vector prefix of `q` (E4M3 codes) times `s` into `d`;
        /// returns how many it decoded. Bit-identical to `E4M3_TO_F32[q] * s`: the code's
        /// exponent and mantissa bits go to the f32 fields 3 exponent bits lower
        /// (subnormal codes become f32 subnormals), `x 2^120` rebiases exactly, then one
        /// rounding by `s`; the two NaN codes are set to NaN.
        ///
        /// # Safety
        /// The CPU has the ISA; `d.len() >= q.len()`.
        #[target_feature(enable = $feat)]
        pub unsafe fn decode_e4m3(q: &[u8], s: f32, d: &mut [f32]) -> usize {
            let full = q.len() / LANES * LANES;
            let mut i = 0;
            // SAFETY: `i + LANES <= full <= q.len() <= d.len()`.
            unsafe {
                while i < full {
                    let v = e4m3_bits(q.as_ptr().add(i), s);
                    store(d.as_mut_ptr().add(i), v);
                    i += LANES;
                }
            }
            full
        }
    };
}
pub(super) use fp8_kernels;
