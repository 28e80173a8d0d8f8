//! The x86-64 side of the kernels: run-time feature detection and the dispatch of each
//! micro-tile to the monomorphized kernel of its ISA and shape. Const generics fix the tile
//! shape at compile time so the accumulators stay in registers; these matches are where a
//! run-time `(mr, nr)` meets them.

use super::{Isa, avx2, avx512};

/// The widest kernel set this CPU runs (F16C is needed by the AVX2 FP8 decode).
pub(super) fn best_isa() -> Option<Isa> {
    if std::arch::is_x86_feature_detected!("avx512f") {
        Some(Isa::Avx512)
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        Some(Isa::Avx2)
    } else {
        None
    }
}

/// Dispatches one micro-tile to the kernel of its ISA, weight kind and shape.
///
/// # Safety
/// See [`avx512::micro_f32`]: `mr <= MR`, `nr <= NR`, every pointer covers its block, and
/// `isa` was detected on this CPU.
pub(super) unsafe fn micro(
    isa: Isa,
    bf16_rows: bool,
    mr: usize,
    nr: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    next: &[u8],
) {
    let (np, nl) = (next.as_ptr(), next.len());
    macro_rules! shapes {
        ($m:ident, $f:ident, $bt:ty $(, $extra:expr)*) => {
            match (mr, nr) {
                (1, 1) => $m::$f::<1, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (1, 2) => $m::$f::<1, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (1, 3) => $m::$f::<1, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (1, _) => $m::$f::<1, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (2, 1) => $m::$f::<2, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (2, 2) => $m::$f::<2, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (2, 3) => $m::$f::<2, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (2, _) => $m::$f::<2, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (3, 1) => $m::$f::<3, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (3, 2) => $m::$f::<3, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (3, 3) => $m::$f::<3, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (3, _) => $m::$f::<3, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (_, 1) => $m::$f::<4, 1>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (_, 2) => $m::$f::<4, 2>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (_, 3) => $m::$f::<4, 3>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
                (_, _) => $m::$f::<4, 4>(a, lda, b as *const $bt, ldb, kc, c, ldc, accumulate $(, $extra)*),
            }
        };
    }
    // SAFETY: the caller guarantees the ISA was detected on this CPU (`detected`) and the
    // kernels' contract.
    unsafe {
        match (isa, bf16_rows) {
            (Isa::Avx512, false) => shapes!(avx512, micro_f32, f32),
            (Isa::Avx512, true) => shapes!(avx512, micro_bf16, u16, np, nl),
            (Isa::Avx2, false) => shapes!(avx2, micro_f32, f32),
            (Isa::Avx2, true) => shapes!(avx2, micro_bf16_halves, u16, np, nl),
        }
    }
}

/// Dispatches one fused FP8 micro-tile (see [`avx512::micro_fp8`]).
///
/// # Safety
/// `isa` was detected on this CPU; `mr <= FUSED_MR`, `nr <= NR`; `a` covers `mr` rows of `k`
/// floats at stride `lda`, `b` `nr` rows of `k` codes at stride `ldb`, `srow` their
/// `ceil(k / b1)` block scales (each finite when multiplied by 256), `c` an `mr x nr` block
/// at stride `ldc`.
pub(super) unsafe fn micro_fp8(
    isa: Isa,
    mr: usize,
    nr: usize,
    a: *const f32,
    lda: usize,
    b: *const u8,
    ldb: usize,
    k: usize,
    srow: &[f32],
    b1: usize,
    c: *mut f32,
    ldc: usize,
    next: &[u8],
) {
    let (np, nl) = (next.as_ptr(), next.len());
    macro_rules! shapes {
        ($m:ident) => {
            match (mr, nr) {
                (1, 1) => $m::micro_fp8::<1, 1>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (1, 2) => $m::micro_fp8::<1, 2>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (1, 3) => $m::micro_fp8::<1, 3>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (1, _) => $m::micro_fp8::<1, 4>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (_, 1) => $m::micro_fp8::<2, 1>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (_, 2) => $m::micro_fp8::<2, 2>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (_, 3) => $m::micro_fp8::<2, 3>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
                (_, _) => $m::micro_fp8::<2, 4>(a, lda, b, ldb, k, srow, b1, c, ldc, np, nl),
            }
        };
    }
    // SAFETY: the caller guarantees the ISA was detected and the kernel's contract.
    unsafe {
        match isa {
            Isa::Avx512 => shapes!(avx512),
            Isa::Avx2 => shapes!(avx2),
        }
    }
}

/// Decodes the longest whole-vector prefix of the E4M3 codes `q` times `s` into `d`; returns
/// how many it decoded (the caller does the rest through the lookup table).
///
/// # Safety
/// `isa` was detected on this CPU; `d.len() >= q.len()`.
pub(super) unsafe fn decode_e4m3(isa: Isa, q: &[u8], s: f32, d: &mut [f32]) -> usize {
    // SAFETY: the caller guarantees the ISA and the lengths.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::decode_e4m3(q, s, d),
            Isa::Avx2 => avx2::decode_e4m3(q, s, d),
        }
    }
}

/// The ISA whose kernels decode the packed formats: AVX-512 only with BW and VNNI (the
/// 4-bit kernel's 16-bit products), else the AVX2 ones (every AVX-512 CPU has AVX2).
pub(super) fn packed_isa(isa: Isa) -> Isa {
    static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let full = *FULL.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vnni")
    });
    match isa {
        Isa::Avx512 if full => Isa::Avx512,
        _ => Isa::Avx2,
    }
}

/// Dispatches one packed-format micro-tile by ISA, format (`packed_rows::INT4` ...) and
/// shape: [`avx512::micro_nib`] for the 4-bit formats (`group` their scale group; `acts`
/// from `quantize_acts` for rows `i0..`), [`avx512::micro_int8`] for INT8 (`a` its rows of
/// `k` floats; `group`, `z` and `acts` unread).
///
/// # Safety
/// `isa` is `packed_isa` of one detected on this CPU; `mr <= FUSED_MR`, `nr <= NR`; the
/// pointers as the kernel of `fmt` requires.
pub(super) unsafe fn micro_packed(
    isa: Isa,
    fmt: u8,
    mr: usize,
    nr: usize,
    a: *const f32,
    acts: (*const i16, *const f32, *const f32),
    b: *const u8,
    ldb: usize,
    k: usize,
    group: usize,
    s: *const f32,
    z: *const f32,
    c: *mut f32,
    ldc: usize,
    next: &[u8],
) {
    use super::packed_rows::{FP4, INT4, INT4_ZP};
    let (np, nl) = (next.as_ptr(), next.len());
    let (aq, asc, asum) = acts;
    macro_rules! shapes {
        ($m:ident, nib, $f:ident) => {
            match (mr, nr) {
                (1, 1) => $m::micro_nib::<1, 1, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (1, 2) => $m::micro_nib::<1, 2, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (1, 3) => $m::micro_nib::<1, 3, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (1, _) => $m::micro_nib::<1, 4, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (_, 1) => $m::micro_nib::<2, 1, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (_, 2) => $m::micro_nib::<2, 2, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (_, 3) => $m::micro_nib::<2, 3, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
                (_, _) => $m::micro_nib::<2, 4, $f>(aq, asc, asum, k, b, ldb, group, s, z, c, ldc, np, nl),
            }
        };
        ($m:ident, int8) => {
            match (mr, nr) {
                (1, 1) => $m::micro_int8::<1, 1>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (1, 2) => $m::micro_int8::<1, 2>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (1, 3) => $m::micro_int8::<1, 3>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (1, _) => $m::micro_int8::<1, 4>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (_, 1) => $m::micro_int8::<2, 1>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (_, 2) => $m::micro_int8::<2, 2>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (_, 3) => $m::micro_int8::<2, 3>(a, k, b, ldb, k, s, c, ldc, np, nl),
                (_, _) => $m::micro_int8::<2, 4>(a, k, b, ldb, k, s, c, ldc, np, nl),
            }
        };
    }
    macro_rules! formats {
        ($m:ident) => {
            match fmt {
                INT4 => shapes!($m, nib, INT4),
                INT4_ZP => shapes!($m, nib, INT4_ZP),
                FP4 => shapes!($m, nib, FP4),
                _ => shapes!($m, int8),
            }
        };
    }
    // SAFETY: the caller guarantees the ISA (with BW and VNNI for AVX-512, `packed_isa`) was
    // detected and the kernel's contract.
    unsafe {
        match isa {
            Isa::Avx512 => formats!(avx512),
            Isa::Avx2 => formats!(avx2),
        }
    }
}
