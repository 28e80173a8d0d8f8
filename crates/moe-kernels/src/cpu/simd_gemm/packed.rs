//! The few-rows (decode) kernels of the packed formats, written once as a template
//! (`packed_kernels!`) and instantiated per ISA. They follow `micro_fp8`: each packed byte is
//! loaded once per call and decoded in registers (no widened copy of a row), codes become
//! their exact unscaled values, and each scale group's partial dot products are multiplied by
//! the group's scale once, not every weight.
//!
//! Decode is what bounds a 4-bit format on a CPU: a weight costs the arithmetic of a 16-bit
//! one for a quarter of the bytes, so every instruction per vector of weights counts. Hence
//! `micro_nib` loads one vector of packed bytes per row and chunk (`8 x LANES` weights) and
//! takes nibble `t` of every 32-bit lane in place with shifts: vector `t` holds weights
//! `8l + t` of the chunk, lane `l`, an order `A` is permuted to once per call
//! (`permute_stride8`); no byte-widening shuffle per vector. INT4 needs no integer
//! conversion either: the nibble shifted under the exponent of 1.0 is `1 + q / 16`, and the
//! `1` (and the zero point) come out of the sums per chunk with the activations' lane sums.
//! E2M1 takes one table lookup. On this project's Zen 4 host, one core, weights in L2, this
//! took INT4 from 9 GB/s (bytes widened by `vpmovzxbd`, values from a `vpermd` table) to
//! 12 GB/s. A lane's scale group is `8l / group` (groups are multiples of 8), so a group
//! smaller than the chunk is a per-lane scale vector built once per chunk (`expand`).
//!
//! The ISA module supplies `Bits`, `load_bits`, `nibble`, `flip_signs`, `expand`,
//! `lane_groups`, `fnmadd`, `Tab`/`table`, `decode8` and `PER` besides the helpers of
//! `float.rs`.

/// `0..=15`: a placeholder table for the INT4 formats, which decode without one.
pub(super) static NIBBLES: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

/// Emits `micro_nib` (INT4, NVFP4, MXFP4) and `micro_int8` for one ISA (`$feat`: its
/// `target_feature` list).
macro_rules! packed_kernels {
    ($feat:literal) => {
        /// One `MR x NR` tile of `C` over all of `k` from 4-bit rows decoded in registers:
        /// per chunk of `8 x LANES` weights, sums of `A_i · code_j` (exact code values; for
        /// INT4 `1 + q / 16`, corrected per chunk), then `acc += sum * scale` with the
        /// chunk's per-lane scales.
        ///
        /// # Safety
        /// The CPU has the ISA; `a` covers `MR` rows of `k` finite floats at stride `lda`,
        /// each chunk in `permute_stride8` order, and for INT4 `asum` their lane sums per
        /// chunk (`chunk_sums`, `k / 8` per row) at stride `k / 8`; `b` `NR` rows of `k / 2`
        /// bytes at stride `ldb`; `k` is a multiple of `8 x LANES`, `group` a multiple of 8
        /// that divides it or is a multiple of it; `s` (and `z`, as `1 + z / 16`, for
        /// `INT4_ZP`) hold `NR` rows of `per_row = k / group` values at stride `per_row`,
        /// plus `LANES` readable values past the end; `c` an `MR x NR` block at stride `ldc`.
        /// `next..next + next_len` (only prefetched) may be anything.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_nib<const MR: usize, const NR: usize, const FMT: u8>(
            a: *const f32,
            lda: usize,
            b: *const u8,
            ldb: usize,
            k: usize,
            group: usize,
            s: *const f32,
            z: *const f32,
            asum: *const f32,
            c: *mut f32,
            ldc: usize,
            next: *const u8,
            next_len: usize,
        ) {
            use super::packed::NIBBLES;
            use super::packed_rows::{FP4, INT4, INT4_ZP};
            // INT4 sums `a * (1 + q / 16)` (see `nibble`): `sum a (q - z) = 16 (sum - (1 + z
            // / 16) sum a)`, with the chunk's `sum a` per lane from `asum`; a signed nibble is
            // `q - 8` once its sign bit is flipped.
            let int4 = FMT == INT4 || FMT == INT4_ZP;
            let ch = 8 * LANES;
            let per_row = k / group;
            let idx = lane_groups(group);
            let tab = table(if FMT == FP4 {
                &crate::codec::fp4::E2M1_VALUES
            } else {
                &NIBBLES
            });
            let mut acc = [[zero(); NR]; MR];
            let mut pf = 0;
            // The chunk's first group, advanced without a division per chunk (an integer
            // division costs as much as a row's decode of a chunk).
            let (g_inc, chunks_per_inc) = if group >= ch {
                (1, group / ch)
            } else {
                (ch / group, 1)
            };
            let (mut g, mut left) = (0, chunks_per_inc);
            // SAFETY: (whole body) every offset stays below `k` values (`k / 2` bytes) within
            // its row, every scale read below `NR * per_row + LANES`, as the contract provides.
            unsafe {
                let mut c0 = 0;
                while c0 < k {
                    // One line of the next row group per row and chunk: at least the rate
                    // this group is read at, so the next one is in L2 when it starts.
                    for _ in 0..NR {
                        if pf < next_len {
                            prefetch_l2(next.wrapping_add(pf));
                            pf += 64;
                        }
                    }
                    let mut v = [load_bits(b); NR];
                    let mut zv = [splat(1.5); NR];
                    for j in 0..NR {
                        v[j] = load_bits(b.add(j * ldb + c0 / 2));
                        if FMT == INT4 {
                            v[j] = flip_signs(v[j]);
                        }
                        if FMT == INT4_ZP {
                            zv[j] = expand(z.add(j * per_row + g), idx);
                        }
                    }
                    let mut seg = [[zero(); NR]; MR];
                    for t in 0..8 {
                        for j in 0..NR {
                            let w = nibble::<FMT>(v[j], t, &tab);
                            for i in 0..MR {
                                let av = load(a.add(i * lda + c0 + t * LANES));
                                seg[i][j] = fma(av, w, seg[i][j]);
                            }
                        }
                    }
                    let mut sa = [zero(); MR];
                    if int4 {
                        for i in 0..MR {
                            sa[i] = load(asum.add(i * (k / 8) + c0 / 8));
                        }
                    }
                    for j in 0..NR {
                        let sv = expand(s.add(j * per_row + g), idx);
                        for i in 0..MR {
                            let sum = if int4 {
                                fnmadd(zv[j], sa[i], seg[i][j])
                            } else {
                                seg[i][j]
                            };
                            acc[i][j] = fma(sum, sv, acc[i][j]);
                        }
                    }
                    c0 += ch;
                    left -= 1;
                    if left == 0 {
                        g += g_inc;
                        left = chunks_per_inc;
                    }
                }
                let unit = if int4 { 16.0 } else { 1.0 };
                for i in 0..MR {
                    for j in 0..NR {
                        *c.add(i * ldc + j) = hsum(acc[i][j]) * unit;
                    }
                }
            }
        }

        /// One `MR x NR` tile of `C` over all of `k` from INT8 rows decoded in registers,
        /// 16 codes per step: `(sum A_i · q_j) * s_j`; columns past the last whole step take
        /// the reference's per-element product.
        ///
        /// # Safety
        /// The CPU has the ISA; `a` covers `MR` rows of `k` floats at stride `lda`, `b` `NR`
        /// rows of `k` codes at stride `ldb`, `s` their `NR` scales, `c` an `MR x NR` block
        /// at stride `ldc`. `next..next + next_len` (only prefetched) may be anything.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_int8<const MR: usize, const NR: usize>(
            a: *const f32,
            lda: usize,
            b: *const u8,
            ldb: usize,
            k: usize,
            s: *const f32,
            c: *mut f32,
            ldc: usize,
            next: *const u8,
            next_len: usize,
        ) {
            let full = k / 16 * 16;
            let mut seg = [[zero(); NR]; MR];
            let mut pf = 0;
            // SAFETY: (whole body) every offset stays below `k` within its row and `s` holds
            // `NR` scales, as the contract provides.
            unsafe {
                let mut p = 0;
                while p < full {
                    // A line of each next row per 64 columns, the rate this group is read at.
                    if p % 64 == 0 {
                        for _ in 0..NR {
                            if pf < next_len {
                                prefetch_l2(next.wrapping_add(pf));
                                pf += 64;
                            }
                        }
                    }
                    let mut w = [[zero(); PER]; NR];
                    for j in 0..NR {
                        w[j] = decode8(b.add(j * ldb + p));
                    }
                    for i in 0..MR {
                        for v in 0..PER {
                            let av = load(a.add(i * lda + p + v * LANES));
                            for j in 0..NR {
                                seg[i][j] = fma(av, w[j][v], seg[i][j]);
                            }
                        }
                    }
                    p += 16;
                }
                for j in 0..NR {
                    let sj = *s.add(j);
                    for i in 0..MR {
                        let mut t = hsum(seg[i][j]) * sj;
                        for q in full..k {
                            let w = f32::from(*b.add(j * ldb + q) as i8) * sj;
                            t += *a.add(i * lda + q) * w;
                        }
                        *c.add(i * ldc + j) = t;
                    }
                }
            }
        }
    };
}
pub(super) use packed_kernels;
