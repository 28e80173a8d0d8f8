//! The few-rows (decode) kernels of the packed formats, written once as a template
//! (`packed_kernels!`) and instantiated per ISA. They follow `micro_fp8`: each packed byte is
//! loaded once per call and decoded in registers (no widened copy of a row), codes become
//! their exact unscaled values, and each scale group's partial dot products are multiplied by
//! the group's scale once, not every weight.
//!
//! Decode is what bounds a 4-bit format on a CPU: a weight costs the arithmetic of a 16-bit
//! one for a quarter of the bytes, so every instruction per vector of weights counts. Hence
//! `micro_nib` works in integers: the activations are quantized once per call to 16 bits per
//! chunk of `8 x LANES` (`packed_rows::quantize_acts`: one f32 scale per row and chunk, the
//! round-off at most half a step of `max |a| / 32767`, far below the formats' own error), and
//! each 16-bit word of packed bytes gives its four nibbles with a shift and a mask (INT4) or a
//! table lookup (E2M1 as `2 x` its value, exact integers); `vpmaddwd` (and `vpdpwssd` with
//! AVX-512 VNNI) multiplies 32 weights (16 on AVX2) by activations per instruction and sums
//! pairs exactly in 32 bits, twice the weights of an f32 FMA, with no conversion per weight.
//! Lane `l` of a chunk's 32-bit sums covers weights `8l..8l + 8`, so a lane's scale group is
//! `8l / group` (groups are multiples of 8); a group smaller than the chunk is a per-lane
//! scale vector built once per chunk (`expand`). Each chunk's sums become f32 once, times the
//! activation scale and the weights' scale. The zero point of INT4 (8 for signed nibbles)
//! comes out of the sums with the activations' lane sums. On this project's Zen 4 host, one
//! core, a 768 x 2048 matrix in L2, one row of activations: INT4 (g128, zero points) went from
//! 12 GB/s of packed bytes (f32 FMAs on `1 + q / 16`) to 16-17, NVFP4 and MXFP4 to 11-12
//! (AVX-512; AVX2 13-14 and 10-11).
//!
//! The ISA module supplies `Bits`, `load_bits`, `flip_signs`, `nib4`, `dot4`, `to_f32`,
//! `mul`, `expand`, `lane_groups`, `fnmadd`, `WTab`/`wtable`, `decode8` and `PER` besides the
//! helpers of `float.rs`.

/// E2M1 code `c` (`codec::fp4::E2M1_VALUES`) as the integer `2 x` its value: the 4-bit
/// kernel's lookup table (test `e2m1_table_is_twice_the_codec`).
pub(super) static E2M1_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Emits `micro_nib` (INT4, NVFP4, MXFP4) and `micro_int8` for one ISA (`$feat`: its
/// `target_feature` list; `$nib`: the 4-bit kernel's, which may add to it).
macro_rules! packed_kernels {
    ($feat:literal, $nib:literal) => {
        /// One `MR x NR` tile of `C` over all of `k` from 4-bit rows decoded in registers:
        /// per chunk of `8 x LANES` weights, exact 32-bit sums of `A_i · code_j` (16-bit
        /// activations, integer codes: INT4 nibbles, `2 x` E2M1), then `acc += (sum - z ·
        /// asum) · ascale_i · scale_j` with the chunk's per-lane scales.
        ///
        /// # Safety
        /// The CPU has the kernel's features; `a` covers `MR` rows of `k` values at stride
        /// `k` from `quantize_acts` for this ISA's chunk, `ascale` their `k / (8 x LANES)`
        /// scales per row and, for INT4, `asum` their lane sums (`k / 8` per row); `b` `NR`
        /// rows of `k / 2` bytes at stride `ldb`; `k` is a multiple of `8 x LANES`, `group` a
        /// multiple of 8 that divides it or is a multiple of it; `s` (and `z` for `INT4_ZP`)
        /// hold `NR` rows of `per_row = k / group` values at stride `per_row`, plus `LANES`
        /// readable values past the end; `c` an `MR x NR` block at stride `ldc`.
        /// `next..next + next_len` (only prefetched) may be anything.
        #[target_feature(enable = $nib)]
        pub unsafe fn micro_nib<const MR: usize, const NR: usize, const FMT: u8>(
            a: *const i16,
            ascale: *const f32,
            asum: *const f32,
            k: usize,
            b: *const u8,
            ldb: usize,
            group: usize,
            s: *const f32,
            z: *const f32,
            c: *mut f32,
            ldc: usize,
            next: *const u8,
            next_len: usize,
        ) {
            use super::packed_rows::{FP4, INT4, INT4_ZP};
            // INT4 sums `a_q · q` for the unsigned nibble `q`: `sum a (q - z) = sum - z sum a`
            // with the chunk's `sum a` per lane from `asum`; a signed nibble is `q - 8` once
            // its sign bit is flipped.
            let int4 = FMT == INT4 || FMT == INT4_ZP;
            let ch = 8 * LANES;
            let chunks = k / ch;
            let per_row = k / group;
            let idx = lane_groups(group);
            // A group of a whole chunk or more: the chunk's scale is a broadcast.
            let whole = group >= ch;
            let tab = wtable();
            let mut acc = [[zero(); NR]; MR];
            let mut pf = 0;
            // The chunk's first group, advanced without a division per chunk.
            let (g_inc, chunks_per_inc) = if whole { (1, group / ch) } else { (ch / group, 1) };
            let (mut g, mut left) = (0, chunks_per_inc);
            // SAFETY: (whole body) every offset stays below `k` values (`k / 2` bytes) within
            // its row, every scale read below `NR * per_row + LANES`, as the contract provides.
            unsafe {
                for ci in 0..chunks {
                    let c0 = ci * ch;
                    // One line of the next row group per row and chunk: at least the rate
                    // this group is read at, so the next one is in L2 when it starts.
                    for _ in 0..NR {
                        if pf < next_len {
                            prefetch_l2(next.wrapping_add(pf));
                            pf += 64;
                        }
                    }
                    let mut sc = [zero(); MR];
                    let mut sa = [zero(); MR];
                    for i in 0..MR {
                        sc[i] = splat(*ascale.add(i * chunks + ci));
                        if int4 {
                            sa[i] = load(asum.add(i * (k / 8) + c0 / 8));
                        }
                    }
                    for j in 0..NR {
                        let mut v = load_bits(b.add(j * ldb + c0 / 2));
                        if FMT == INT4 {
                            v = flip_signs(v);
                        }
                        let w = nib4::<FMT>(v, &tab);
                        let at = j * per_row + g;
                        let sv = if whole {
                            splat(*s.add(at))
                        } else {
                            expand(s.add(at), idx)
                        };
                        let zv = match FMT {
                            INT4_ZP if whole => splat(*z.add(at)),
                            INT4_ZP => expand(z.add(at), idx),
                            _ => splat(8.0),
                        };
                        for i in 0..MR {
                            let mut t = to_f32(dot4(&w, a.add(i * k + c0)));
                            if int4 {
                                t = fnmadd(zv, sa[i], t);
                            }
                            acc[i][j] = fma(mul(t, sc[i]), sv, acc[i][j]);
                        }
                    }
                    left -= 1;
                    if left == 0 {
                        g += g_inc;
                        left = chunks_per_inc;
                    }
                }
                // E2M1 codes were taken at twice their value.
                let unit = if FMT == FP4 { 0.5 } else { 1.0 };
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
