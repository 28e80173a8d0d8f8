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

/// One `2 x LANES` chunk of a bf16 kernel: `pair` widens both halves of each weight row at
/// once (AVX-512: its 32 registers hold the 4 x 4 tile and both halves' weights; the ISA
/// module's `load_bf16_pair`), `halves` the even half, then the odd one reloaded from L1
/// (AVX2: `NR` widened weights live at a time instead of `2 x NR`, so 16 registers hold a
/// 3 x 3 tile without spilling, where the 4 x 4 tile needs 26; `load_bf16_even`/`_odd`).
macro_rules! bf16_step {
    (pair, $a:ident, $lda:ident, $b:ident, $ldb:ident, $p:ident, $acc:ident, $mr:ident, $nr:ident) => {
        let mut be = [zero(); $nr];
        let mut bo = [zero(); $nr];
        for j in 0..$nr {
            (be[j], bo[j]) = load_bf16_pair($b.add(j * $ldb + $p));
        }
        for i in 0..$mr {
            let ae = load($a.add(i * $lda + $p));
            let ao = load($a.add(i * $lda + $p + LANES));
            for j in 0..$nr {
                $acc[i][j] = fma(ae, be[j], $acc[i][j]);
                $acc[i][j] = fma(ao, bo[j], $acc[i][j]);
            }
        }
    };
    (halves, $a:ident, $lda:ident, $b:ident, $ldb:ident, $p:ident, $acc:ident, $mr:ident, $nr:ident) => {
        let mut bw = [zero(); $nr];
        for j in 0..$nr {
            bw[j] = load_bf16_even($b.add(j * $ldb + $p));
        }
        for i in 0..$mr {
            let av = load($a.add(i * $lda + $p));
            for j in 0..$nr {
                $acc[i][j] = fma(av, bw[j], $acc[i][j]);
            }
        }
        for j in 0..$nr {
            bw[j] = load_bf16_odd($b.add(j * $ldb + $p));
        }
        for i in 0..$mr {
            let av = load($a.add(i * $lda + $p + LANES));
            for j in 0..$nr {
                $acc[i][j] = fma(av, bw[j], $acc[i][j]);
            }
        }
    };
}
pub(super) use bf16_step;

/// Emits the bf16 kernel `$name` for one ISA, its chunks done as `bf16_step!($step)` says.
macro_rules! bf16_kernel {
    ($feat:literal, $name:ident, $step:ident) => {
        /// [`micro_f32`] over bf16 weight rows, widened in registers: each `2 x LANES` chunk
        /// of `A` must be in even/odd order (`permute_even_odd`); a partial last chunk is in
        /// natural order. `next..next + next_len` is prefetched along the way.
        ///
        /// # Safety
        /// As [`micro_f32`], with `b` pointing to bf16 bits; `next` may be anything.
        #[target_feature(enable = $feat)]
        pub unsafe fn $name<const MR: usize, const NR: usize>(
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
                    super::float::bf16_step!($step, a, lda, b, ldb, p, acc, MR, NR);
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
pub(super) use bf16_kernel;
