//! The float micro-kernels (f32 rows read directly, bf16 rows widened in registers), written
//! once as templates and instantiated per ISA in `avx512.rs` and `avx2.rs`: the vector width
//! and the intrinsics differ, the loop structure does not. `float_kernels!` (f32, both ISAs),
//! `bf16_pair_kernel!` (bf16, AVX-512: both halves of a chunk widened at once) and
//! `bf16_halves_kernel!` (bf16, AVX2: one half at a time, fewer live registers). The
//! templates call the ISA module's helpers (`zero`, `load`, `fma`, `load_bf16_pair` or
//! `load_bf16_even` / `load_bf16_odd`, `hsum`, `prefetch_l2`, `LANES`) by name.

/// Emits `micro_f32` for one ISA (`$feat`: its `target_feature` list).
macro_rules! float_kernels {
    ($feat:literal) => {
        /// One `MR x NR` tile of `C` from f32 weight rows: `C[i][j] (+)= A_i · B_j` over `kc`.
        ///
        /// # Safety
        /// The CPU has the ISA; `a` covers `MR` rows of `kc` floats at stride `lda`, `b`
        /// `NR` rows of `kc` floats at stride `ldb`, `c` an `MR x NR` block at stride `ldc`.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_f32<const MR: usize, const NR: usize>(
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            kc: usize,
            c: *mut f32,
            ldc: usize,
            accumulate: bool,
        ) {
            let mut acc = [[zero(); NR]; MR];
            let full = kc / LANES * LANES;
            let mut p = 0;
            // SAFETY: (whole body) every offset stays below `kc` within its row, as the
            // contract provides.
            unsafe {
                while p < full {
                    let mut bv = [zero(); NR];
                    for j in 0..NR {
                        bv[j] = load(b.add(j * ldb + p));
                    }
                    for i in 0..MR {
                        let av = load(a.add(i * lda + p));
                        for j in 0..NR {
                            acc[i][j] = fma(av, bv[j], acc[i][j]);
                        }
                    }
                    p += LANES;
                }
                for i in 0..MR {
                    for j in 0..NR {
                        let mut s = hsum(acc[i][j]);
                        for q in full..kc {
                            s += *a.add(i * lda + q) * *b.add(j * ldb + q);
                        }
                        let dst = c.add(i * ldc + j);
                        *dst = if accumulate { *dst + s } else { s };
                    }
                }
            }
        }
    };
}
pub(super) use float_kernels;

/// Emits `micro_bf16` for one ISA (AVX-512: its 32 registers hold the 4 x 4 tile and both
/// halves' widened weights at once). It calls the ISA module's `load_bf16_pair` too.
macro_rules! bf16_pair_kernel {
    ($feat:literal) => {
        /// [`micro_f32`] over bf16 weight rows, widened in registers: each `2 x LANES` chunk
        /// of `A` must be in even/odd order (`permute_even_odd`); a partial last chunk is in
        /// natural order. `next..next + next_len` is prefetched along the way.
        ///
        /// # Safety
        /// As [`micro_f32`], with `b` pointing to bf16 bits; `next` may be anything.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_bf16<const MR: usize, const NR: usize>(
            a: *const f32,
            lda: usize,
            b: *const u16,
            ldb: usize,
            kc: usize,
            c: *mut f32,
            ldc: usize,
            accumulate: bool,
            next: *const u8,
            next_len: usize,
        ) {
            let mut acc = [[zero(); NR]; MR];
            let mut pf = 0;
            let step = 2 * LANES;
            let full = kc / step * step;
            let mut p = 0;
            // SAFETY: (whole body) every offset stays below `kc` within its row.
            unsafe {
                while p < full {
                    // Decode: pull the next row group toward L2 while this one streams,
                    // a line per row and step (a new group starts NR new streams the
                    // hardware prefetcher would otherwise have to discover).
                    for _ in 0..NR {
                        if pf < next_len {
                            prefetch_l2(next.wrapping_add(pf));
                            pf += 64;
                        }
                    }
                    let mut be = [zero(); NR];
                    let mut bo = [zero(); NR];
                    for j in 0..NR {
                        (be[j], bo[j]) = load_bf16_pair(b.add(j * ldb + p));
                    }
                    for i in 0..MR {
                        let ae = load(a.add(i * lda + p));
                        let ao = load(a.add(i * lda + p + LANES));
                        for j in 0..NR {
                            acc[i][j] = fma(ae, be[j], acc[i][j]);
                            acc[i][j] = fma(ao, bo[j], acc[i][j]);
                        }
                    }
                    p += step;
                }
                for i in 0..MR {
                    for j in 0..NR {
                        let mut s = hsum(acc[i][j]);
                        for q in full..kc {
                            let w = f32::from_bits(u32::from(*b.add(j * ldb + q)) << 16);
                            s += *a.add(i * lda + q) * w;
                        }
                        let dst = c.add(i * ldc + j);
                        *dst = if accumulate { *dst + s } else { s };
                    }
                }
            }
        }
    };
}
pub(super) use bf16_pair_kernel;

/// Emits `micro_bf16_halves` for one ISA (AVX2 only: with 32 registers AVX-512 holds the
/// 4 x 4 tile of `micro_bf16` and both halves' weights at once). It calls the ISA module's
/// `load_bf16_even` and `load_bf16_odd` besides the helpers above.
macro_rules! bf16_halves_kernel {
    ($feat:literal) => {
        /// `micro_bf16` (`bf16_pair_kernel`) with the even and odd halves of each chunk done one after the
        /// other: `NR` widened weight vectors live at a time instead of `2 x NR`, so a
        /// 16-register ISA (AVX2) holds a 4 x 3 or 3 x 4 tile of accumulators without
        /// spilling (the 4 x 4 tile of `micro_bf16` needs 26 registers there). The raw
        /// weights are loaded again for the odd half, from L1.
        ///
        /// # Safety
        /// As `micro_bf16`.
        #[target_feature(enable = $feat)]
        pub unsafe fn micro_bf16_halves<const MR: usize, const NR: usize>(
            a: *const f32,
            lda: usize,
            b: *const u16,
            ldb: usize,
            kc: usize,
            c: *mut f32,
            ldc: usize,
            accumulate: bool,
            next: *const u8,
            next_len: usize,
        ) {
            let mut acc = [[zero(); NR]; MR];
            let mut pf = 0;
            let step = 2 * LANES;
            let full = kc / step * step;
            let mut p = 0;
            // SAFETY: (whole body) every offset stays below `kc` within its row.
            unsafe {
                while p < full {
                    // As in `micro_bf16`: the next row group toward L2, a line per row.
                    for _ in 0..NR {
                        if pf < next_len {
                            prefetch_l2(next.wrapping_add(pf));
                            pf += 64;
                        }
                    }
                    let mut bw = [zero(); NR];
                    for j in 0..NR {
                        bw[j] = load_bf16_even(b.add(j * ldb + p));
                    }
                    for i in 0..MR {
                        let av = load(a.add(i * lda + p));
                        for j in 0..NR {
                            acc[i][j] = fma(av, bw[j], acc[i][j]);
                        }
                    }
                    for j in 0..NR {
                        bw[j] = load_bf16_odd(b.add(j * ldb + p));
                    }
                    for i in 0..MR {
                        let av = load(a.add(i * lda + p + LANES));
                        for j in 0..NR {
                            acc[i][j] = fma(av, bw[j], acc[i][j]);
                        }
                    }
                    p += step;
                }
                for i in 0..MR {
                    for j in 0..NR {
                        let mut s = hsum(acc[i][j]);
                        for q in full..kc {
                            let w = f32::from_bits(u32::from(*b.add(j * ldb + q)) << 16);
                            s += *a.add(i * lda + q) * w;
                        }
                        let dst = c.add(i * ldc + j);
                        *dst = if accumulate { *dst + s } else { s };
                    }
                }
            }
        }
    };
}
pub(super) use bf16_halves_kernel;
