//! Off x86-64 there are no hand-written kernels: [`best_isa`] finds none, so the GEMM takes
//! the `gemm`-crate path and nothing here is ever reached with an [`Isa`] (one can only be
//! obtained from detection). The functions mirror `x86.rs` so the loop nest compiles
//! unchanged on every target.

use super::Isa;

pub(super) fn best_isa() -> Option<Isa> {
    None
}

const UNREACHABLE: &str = "no SIMD kernels off x86-64 (detection never yields an Isa here)";

pub(super) unsafe fn micro(
    _: Isa,
    _: bool,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: *const u8,
    _: usize,
    _: usize,
    _: *mut f32,
    _: usize,
    _: bool,
    _: &[u8],
) {
    unreachable!("{UNREACHABLE}")
}

pub(super) unsafe fn micro_fp8(
    _: Isa,
    _: usize,
    _: usize,
    _: *const f32,
    _: usize,
    _: *const u8,
    _: usize,
    _: usize,
    _: &[f32],
    _: usize,
    _: *mut f32,
    _: usize,
    _: &[u8],
) {
    unreachable!("{UNREACHABLE}")
}

pub(super) unsafe fn decode_e4m3(_: Isa, _: &[u8], _: f32, _: &mut [f32]) -> usize {
    0
}

pub(super) fn packed_isa(isa: Isa) -> Isa {
    isa
}

pub(super) unsafe fn micro_packed(
    _: Isa,
    _: u8,
    _: usize,
    _: usize,
    _: *const f32,
    _: (*const i16, *const f32, *const f32),
    _: *const u8,
    _: usize,
    _: usize,
    _: usize,
    _: *const f32,
    _: *const f32,
    _: *mut f32,
    _: usize,
    _: &[u8],
) {
    unreachable!("{UNREACHABLE}")
}
