//! Weight matrices as the host kernels read them: float ([`FloatSlice`]) or quantized
//! ([`QuantSlice`]: the codes and scales of one `[rows, cols]` matrix, borrowed, never
//! dequantized as a whole).
//!
//! Two ways to decode, both bit-identical (the same product of the same factors in the same
//! order):
//! - [`WeightSlice::at`]: one element, for the reference backend's plain loops;
//! - [`WeightSlice::widen_into`]: whole rows into f32, the GEMM's "dequantize tiles on the fly"
//!   (it widens one cache-sized block of rows into reused scratch at a time, so a quantized
//!   expert never exists in f32).
//!
//! Every format decodes through the bit-exact codecs of [`crate::codec`] (lookup tables of
//! E4M3 and E2M1, UE8M0 as a power of two, two's-complement nibbles); nothing here redefines a
//! number format. Quantized matrices are row-major `[rows = out, cols = in]`, packed 4-bit codes
//! two per byte with the even column in the LOW nibble, and every block or group runs along
//! `cols` (the reduction dimension) within one row, except FP8 block scales, which tile both.

use moe_core::{MoeError, Result};

use super::float_slice::FloatSlice;
use crate::codec::e8m0::e8m0_to_f32;
use crate::codec::fp4::E2M1_VALUES;
use crate::codec::fp8::E4M3_TO_F32;
use crate::codec::int::nibble_to_i4;

/// Elements per E4M3 block scale of NVFP4.
pub const NVFP4_BLOCK: usize = 16;
/// Elements per UE8M0 scale of MXFP4.
pub const MXFP4_BLOCK: usize = 32;

/// The codes and scales of one quantized `[rows, cols]` matrix (see each variant for `W`).
#[derive(Clone, Copy, Debug)]
pub enum QuantMatrix<'a> {
    /// E4M3 codes `[rows, cols]`; `W = e4m3(q) * scale`.
    Fp8PerTensor { codes: &'a [u8], scale: f32 },
    /// E4M3 codes `[rows, cols]`, f32 scales `[ceil(rows / b0), ceil(cols / b1)]` for
    /// `block = [b0, b1]`; `W[r, c] = e4m3(q[r, c]) * S[r / b0, c / b1]` (DeepSeek's
    /// `weight_scale_inv` is this multiplier despite its name).
    Fp8Block {
        codes: &'a [u8],
        scales: &'a [f32],
        block: [usize; 2],
    },
    /// E2M1 codes packed `[rows, cols / 2]` (low nibble first), E4M3 block scales
    /// `[rows, cols / 16]`, a per-tensor f32 `global`; `W = e2m1 * e4m3(sf) * global`.
    Nvfp4 {
        packed: &'a [u8],
        block_scales: &'a [u8],
        global: f32,
    },
    /// E2M1 codes packed `[rows, cols / 2]`, UE8M0 scales `[rows, cols / 32]`;
    /// `W = e2m1 * 2^(s - 127)`.
    Mxfp4 { packed: &'a [u8], scales: &'a [u8] },
    /// 4-bit codes packed `[rows, cols / 2]` (low nibble first), f32 scales
    /// `[rows, cols / group]`. With `zeros` (`[rows, cols / group]`, u8): unsigned codes,
    /// `W = (q - z) * s`; without: signed two's-complement nibbles, `W = q * s`.
    Int4Group {
        packed: &'a [u8],
        scales: &'a [f32],
        zeros: Option<&'a [u8]>,
        group: usize,
    },
    /// i8 codes `[rows, cols]` (stored as bytes), one f32 scale per row; `W = q * s[row]`.
    Int8Channel { codes: &'a [u8], scales: &'a [f32] },
}

/// A quantized `[rows, cols]` matrix. Build it with [`QuantSlice::new`], which checks every
/// slice length; the kernels re-check hand-built values before decoding.
#[derive(Clone, Copy, Debug)]
pub struct QuantSlice<'a> {
    pub rows: usize,
    pub cols: usize,
    pub matrix: QuantMatrix<'a>,
}

/// A weight matrix in a float dtype or a quantized format.
#[derive(Clone, Copy, Debug)]
pub enum WeightSlice<'a> {
    Float(FloatSlice<'a>),
    Quant(QuantSlice<'a>),
}

impl<'a> From<FloatSlice<'a>> for WeightSlice<'a> {
    fn from(f: FloatSlice<'a>) -> Self {
        WeightSlice::Float(f)
    }
}

impl<'a> From<QuantSlice<'a>> for WeightSlice<'a> {
    fn from(q: QuantSlice<'a>) -> Self {
        WeightSlice::Quant(q)
    }
}

/// `part` of `what` has `got` elements where `want` are needed.
fn length_error(what: &str, part: &str, want: usize, got: usize) -> MoeError {
    MoeError::shape(format!("{what}.{part}"), format!("{want} elements"), &[got])
}

fn check_part(what: &str, part: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(length_error(what, part, want, got))
    }
}

/// The low (`i` even) or high nibble of element `i` of a packed array.
#[inline]
fn nibble(packed: &[u8], i: usize) -> u8 {
    let b = packed[i / 2];
    if i.is_multiple_of(2) { b & 0x0F } else { b >> 4 }
}

/// `(q - z) * s` with the difference taken exactly in integers (as the INT4 codec does).
#[inline]
fn int4_zero_point(q: u8, z: u8, s: f32) -> f32 {
    f32::from(i16::from(q) - i16::from(z)) * s
}

impl<'a> QuantSlice<'a> {
    /// A `[rows, cols]` matrix over `matrix`, checking every slice length against the shape;
    /// errors are `ShapeMismatch` naming `what.part` (`w2_weight.scales`).
    pub fn new(what: &str, rows: usize, cols: usize, matrix: QuantMatrix<'a>) -> Result<Self> {
        let q = QuantSlice { rows, cols, matrix };
        q.validate(what)?;
        Ok(q)
    }

    /// Checks that every slice of the matrix fits `rows x cols` (and that blocks, groups and
    /// packing divide `cols` where the format needs it).
    pub fn validate(&self, what: &str) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let elems = rows
            .checked_mul(cols)
            .ok_or_else(|| MoeError::shape(what, "a size that fits in memory", &[rows, cols]))?;
        let divides = |unit: usize, why: &str| -> Result<()> {
            if unit == 0 || cols % unit != 0 {
                return Err(MoeError::shape(
                    what,
                    format!("cols a multiple of {unit} ({why})"),
                    &[rows, cols],
                ));
            }
            Ok(())
        };
        match self.matrix {
            QuantMatrix::Fp8PerTensor { codes, .. } => check_part(what, "codes", elems, codes.len()),
            QuantMatrix::Fp8Block {
                codes,
                scales,
                block: [b0, b1],
            } => {
                if b0 == 0 || b1 == 0 {
                    return Err(MoeError::shape(what, "a non-empty FP8 scale block", &[b0, b1]));
                }
                check_part(what, "codes", elems, codes.len())?;
                check_part(what, "scales", rows.div_ceil(b0) * cols.div_ceil(b1), scales.len())
            }
            QuantMatrix::Nvfp4 {
                packed, block_scales, ..
            } => {
                divides(NVFP4_BLOCK, "NVFP4 blocks of 16")?;
                check_part(what, "packed", elems / 2, packed.len())?;
                check_part(what, "block_scales", elems / NVFP4_BLOCK, block_scales.len())
            }
            QuantMatrix::Mxfp4 { packed, scales } => {
                divides(MXFP4_BLOCK, "MXFP4 blocks of 32")?;
                check_part(what, "packed", elems / 2, packed.len())?;
                check_part(what, "scales", elems / MXFP4_BLOCK, scales.len())
            }
            QuantMatrix::Int4Group {
                packed,
                scales,
                zeros,
                group,
            } => {
                // An even group keeps each byte within one group, so rows decode group by group.
                if group % 2 != 0 {
                    return Err(MoeError::shape(what, "an even INT4 group size", &[group]));
                }
                divides(group, "INT4 groups")?;
                check_part(what, "packed", elems / 2, packed.len())?;
                check_part(what, "scales", elems / group, scales.len())?;
                zeros.map_or(Ok(()), |z| check_part(what, "zeros", elems / group, z.len()))
            }
            QuantMatrix::Int8Channel { codes, scales } => {
                check_part(what, "codes", elems, codes.len())?;
                check_part(what, "scales", rows, scales.len())
            }
        }
    }

    /// Elements of the matrix (`rows * cols`).
    pub fn len(&self) -> usize {
        self.rows.saturating_mul(self.cols)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` (row-major) decoded to f32. Panics when `i` is out of range or the slices
    /// are shorter than the shape says (like slice indexing; [`QuantSlice::new`] rules out
    /// the latter).
    #[inline]
    pub fn at(&self, i: usize) -> f32 {
        let cols = self.cols;
        match self.matrix {
            QuantMatrix::Fp8PerTensor { codes, scale } => E4M3_TO_F32[codes[i] as usize] * scale,
            QuantMatrix::Fp8Block {
                codes,
                scales,
                block: [b0, b1],
            } => {
                let (r, c) = (i / cols, i % cols);
                E4M3_TO_F32[codes[i] as usize] * scales[(r / b0) * cols.div_ceil(b1) + c / b1]
            }
            // Blocks and groups divide `cols`, so the flat index maps to the block directly.
            QuantMatrix::Nvfp4 {
                packed,
                block_scales,
                global,
            } => {
                let s = E4M3_TO_F32[block_scales[i / NVFP4_BLOCK] as usize] * global;
                E2M1_VALUES[nibble(packed, i) as usize] * s
            }
            QuantMatrix::Mxfp4 { packed, scales } => {
                E2M1_VALUES[nibble(packed, i) as usize] * e8m0_to_f32(scales[i / MXFP4_BLOCK])
            }
            QuantMatrix::Int4Group {
                packed,
                scales,
                zeros,
                group,
            } => {
                let (q, s) = (nibble(packed, i), scales[i / group]);
                match zeros {
                    Some(z) => int4_zero_point(q, z[i / group], s),
                    None => f32::from(nibble_to_i4(q)) * s,
                }
            }
            QuantMatrix::Int8Channel { codes, scales } => f32::from(codes[i] as i8) * scales[i / cols],
        }
    }

    /// Decodes rows `first..first + out.len() / cols` into `out` (the caller checked the range).
    fn decode_rows(&self, first: usize, out: &mut [f32]) {
        let cols = self.cols;
        for (j, row) in out.chunks_exact_mut(cols).enumerate() {
            self.decode_row(first + j, row);
        }
    }

    /// Decodes row `r` into `out` (`cols` long), block by block, with the factors of [`Self::at`].
    fn decode_row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols;
        let row = r * cols;
        match self.matrix {
            QuantMatrix::Fp8PerTensor { codes, scale } => {
                for (o, &q) in out.iter_mut().zip(&codes[row..row + cols]) {
                    *o = E4M3_TO_F32[q as usize] * scale;
                }
            }
            QuantMatrix::Fp8Block {
                codes,
                scales,
                block: [b0, b1],
            } => {
                let nb = cols.div_ceil(b1);
                let srow = &scales[(r / b0) * nb..(r / b0 + 1) * nb];
                let blocks = out.chunks_mut(b1).zip(codes[row..row + cols].chunks(b1));
                for ((o, q), &s) in blocks.zip(srow) {
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = E4M3_TO_F32[q as usize] * s;
                    }
                }
            }
            QuantMatrix::Nvfp4 {
                packed,
                block_scales,
                global,
            } => {
                let sf = &block_scales[row / NVFP4_BLOCK..(row + cols) / NVFP4_BLOCK];
                let blocks = out
                    .chunks_exact_mut(NVFP4_BLOCK)
                    .zip(packed[row / 2..(row + cols) / 2].chunks_exact(NVFP4_BLOCK / 2));
                for ((o, p), &sf) in blocks.zip(sf) {
                    let s = E4M3_TO_F32[sf as usize] * global;
                    unpack_fp4(o, p, s);
                }
            }
            QuantMatrix::Mxfp4 { packed, scales } => {
                let sc = &scales[row / MXFP4_BLOCK..(row + cols) / MXFP4_BLOCK];
                let blocks = out
                    .chunks_exact_mut(MXFP4_BLOCK)
                    .zip(packed[row / 2..(row + cols) / 2].chunks_exact(MXFP4_BLOCK / 2));
                for ((o, p), &e) in blocks.zip(sc) {
                    unpack_fp4(o, p, e8m0_to_f32(e));
                }
            }
            QuantMatrix::Int4Group {
                packed,
                scales,
                zeros,
                group,
            } => {
                let (g0, g1) = (row / group, (row + cols) / group);
                let groups = out
                    .chunks_exact_mut(group)
                    .zip(packed[row / 2..(row + cols) / 2].chunks_exact(group / 2));
                for (g, (o, p)) in (g0..g1).zip(groups) {
                    let s = scales[g];
                    match zeros {
                        Some(z) => {
                            let z = z[g];
                            for (pair, &b) in o.chunks_exact_mut(2).zip(p) {
                                pair[0] = int4_zero_point(b & 0x0F, z, s);
                                pair[1] = int4_zero_point(b >> 4, z, s);
                            }
                        }
                        None => {
                            for (pair, &b) in o.chunks_exact_mut(2).zip(p) {
                                pair[0] = f32::from(nibble_to_i4(b & 0x0F)) * s;
                                pair[1] = f32::from(nibble_to_i4(b >> 4)) * s;
                            }
                        }
                    }
                }
            }
            QuantMatrix::Int8Channel { codes, scales } => {
                let s = scales[r];
                for (o, &q) in out.iter_mut().zip(&codes[row..row + cols]) {
                    *o = f32::from(q as i8) * s;
                }
            }
        }
    }
}

/// E2M1 pairs of `packed` (low nibble first) times `s` into `out` (`2 * packed.len()` long).
#[inline]
fn unpack_fp4(out: &mut [f32], packed: &[u8], s: f32) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = E2M1_VALUES[(b & 0x0F) as usize] * s;
        pair[1] = E2M1_VALUES[(b >> 4) as usize] * s;
    }
}

impl WeightSlice<'_> {
    /// Elements of the matrix.
    pub fn len(&self) -> usize {
        match self {
            WeightSlice::Float(f) => f.len(),
            WeightSlice::Quant(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` decoded to f32 (panics when out of range, like slice indexing).
    #[inline]
    pub fn at(&self, i: usize) -> f32 {
        match self {
            WeightSlice::Float(f) => f.at(i),
            WeightSlice::Quant(q) => q.at(i),
        }
    }

    /// Checks that the slice can serve as an `[rows, cols]` GEMM operand: a float slice holds
    /// at least `rows * cols` elements, a quantized one has exactly that shape and valid slices.
    pub fn check_operand(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        match self {
            WeightSlice::Float(f) => match rows.checked_mul(cols) {
                Some(n) if f.len() >= n => Ok(()),
                _ => Err(MoeError::shape(
                    what,
                    format!("at least {rows} x {cols} elements"),
                    &[f.len()],
                )),
            },
            WeightSlice::Quant(q) => {
                if (q.rows, q.cols) != (rows, cols) {
                    return Err(MoeError::shape(what, format!("[{rows}, {cols}]"), &[q.rows, q.cols]));
                }
                q.validate(what)
            }
        }
    }

    /// Decodes elements `start..start + out.len()` into `out`. Quantized matrices decode whole
    /// rows only: `start` and `out.len()` must be multiples of `cols` (the GEMM widens blocks
    /// of rows); anything else, or a range past the end, is a shape error.
    pub fn widen_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        match self {
            WeightSlice::Float(f) => f.widen_into(start, out),
            WeightSlice::Quant(q) => {
                let end = start.checked_add(out.len());
                let aligned = q.cols > 0 && start.is_multiple_of(q.cols) && out.len().is_multiple_of(q.cols);
                if !matches!(end, Some(e) if e <= q.len()) || !(aligned || out.is_empty()) {
                    return Err(MoeError::shape(
                        "widen_into",
                        format!("whole rows of {} elements within {}", q.cols, q.len()),
                        &[start, out.len()],
                    ));
                }
                q.validate("widen_into")?;
                if !out.is_empty() {
                    q.decode_rows(start / q.cols, out);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
#[path = "weight_slice_tests.rs"]
mod tests;
