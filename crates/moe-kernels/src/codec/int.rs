//! Integer weight codecs: symmetric per-channel INT8, and group-wise INT4 either signed
//! symmetric or unsigned with a zero point (AWQ / GPTQ asymmetric).
//!
//! Common conventions:
//! - Weights are `[rows, cols]` row-major f32: rows are output channels (N), cols the reduction
//!   dimension (K). INT8 has one scale per row; INT4 one scale (and zero) per row per group of
//!   `group_size` consecutive columns, stored `[rows, cols / group_size]` row-major.
//! - Rounding is round-half-to-even of `x / scale` (`f32::round_ties_even`, as `torch.round`),
//!   dividing rather than multiplying by a reciprocal so results match the torch quantizers.
//! - Non-finite weights never panic: the scale is computed from the finite values only, NaN
//!   quantizes to the code of 0 and ±inf to the extreme code.
//! - A group (or row) with no non-zero finite value gets scale 1.0, so the stored scale is
//!   always a positive finite number a kernel may divide by.
//!
//! INT4 codes are packed two per byte, first (even) column in the LOW nibble, over the flattened
//! `[rows, cols]` array (an odd total leaves the final high nibble 0). Checkpoint layouts differ
//! and are converted by their loaders: GPTQ packs 8 codes per int32 along K (low bits first, the
//! same order as here) and its v1 format stores `zero - 1`; AWQ packs 8 per int32 along N in the
//! interleaved order 0,2,4,6,1,3,5,7. Here zeros are the plain zero point, one u8 per group.

use super::{CodecError, check_len, pack_nibbles};

/// INT8 codes span [-127, 127]: -128 is never produced, so the grid is symmetric, negation
/// never overflows, and `amax` maps exactly to ±127. (It still decodes, as -128 * scale.)
pub const INT8_QMAX: f32 = 127.0;
/// Signed INT4 quantizes to [-7, 7] with `scale = amax / 7` (TensorRT-LLM / ModelOpt INT4
/// weight-only); the code -8 decodes but is only produced by clamping, never by finite data.
pub const INT4_SYM_QMAX: f32 = 7.0;
/// Unsigned INT4 codes span [0, 15].
pub const UINT4_QMAX: f32 = 15.0;

fn checked_elems(rows: usize, cols: usize) -> Result<usize, CodecError> {
    rows.checked_mul(cols)
        .ok_or_else(|| CodecError::Shape(format!("{rows} x {cols} overflows usize")))
}

/// Largest finite |x| of `xs` (0 when there is none).
fn finite_amax(xs: &[f32]) -> f32 {
    xs.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `amax / qmax`, or 1.0 when that is not a positive finite number (an all-zero group, or an
/// amax so small the quotient underflows to 0).
fn scale_from(amax: f32, qmax: f32) -> f32 {
    let s = amax / qmax;
    if s > 0.0 && s.is_finite() { s } else { 1.0 }
}

/// `round_ties_even(x / scale)` clamped to [lo, hi]; NaN -> 0.
fn round_clamp(x: f32, scale: f32, lo: f32, hi: f32) -> f32 {
    let q = (x / scale).round_ties_even();
    if q.is_nan() { 0.0 } else { q.clamp(lo, hi) }
}

/// Quantizes one value to INT8 with the given scale: `clamp(rne(x / scale), -127, 127)`,
/// NaN -> 0.
pub fn quantize_i8(x: f32, scale: f32) -> i8 {
    // The clamped value is an integer in [-127, 127], so the cast is exact.
    round_clamp(x, scale, -INT8_QMAX, INT8_QMAX) as i8
}

/// Symmetric per-channel INT8 weights: `w[r][c] ~= codes[r * cols + c] * scales[r]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8PerChannel {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols]` row-major, each in [-127, 127].
    pub codes: Vec<i8>,
    /// One per row: `amax_row / 127` (1.0 for a row without non-zero finite values).
    pub scales: Vec<f32>,
}

/// Quantizes `[rows, cols]` row-major weights to symmetric per-row INT8.
pub fn quantize_int8_per_channel(w: &[f32], rows: usize, cols: usize) -> Result<Int8PerChannel, CodecError> {
    check_len("w", checked_elems(rows, cols)?, w.len())?;
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    // `chunks` of a zero-width row would panic on size 0; with cols == 0 there is nothing to code.
    if cols == 0 {
        return Ok(Int8PerChannel {
            rows,
            cols,
            codes,
            scales: vec![1.0; rows],
        });
    }
    for row in w.chunks(cols) {
        let scale = scale_from(finite_amax(row), INT8_QMAX);
        scales.push(scale);
        codes.extend(row.iter().map(|&x| quantize_i8(x, scale)));
    }
    Ok(Int8PerChannel {
        rows,
        cols,
        codes,
        scales,
    })
}

/// `codes[r * cols + c] * scales[r]`, checking the lengths against `rows` and `cols`.
pub fn dequantize_int8_per_channel(
    codes: &[i8],
    scales: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, CodecError> {
    check_len("codes", checked_elems(rows, cols)?, codes.len())?;
    check_len("scales", rows, scales.len())?;
    if cols == 0 {
        return Ok(Vec::new());
    }
    Ok(codes
        .chunks(cols)
        .zip(scales)
        .flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s))
        .collect())
}

impl Int8PerChannel {
    /// The dequantized `[rows, cols]` weights.
    pub fn dequantize(&self) -> Result<Vec<f32>, CodecError> {
        dequantize_int8_per_channel(&self.codes, &self.scales, self.rows, self.cols)
    }
}

/// A signed 4-bit value (clamped to [-8, 7]) as its two's-complement nibble.
pub const fn i4_to_nibble(q: i8) -> u8 {
    let q = if q < -8 {
        -8
    } else if q > 7 {
        7
    } else {
        q
    };
    (q as u8) & 0x0F
}

/// The low nibble as a signed two's-complement 4-bit value in [-8, 7].
pub const fn nibble_to_i4(n: u8) -> i8 {
    // Move the nibble to the top of the byte, then an arithmetic shift sign-extends it.
    ((n << 4) as i8) >> 4
}

/// Group-wise INT4 weights. Symmetric (`zeros == None`): nibbles are signed two's complement
/// and `w ~= q * scale`. Asymmetric (`zeros == Some`): nibbles are unsigned and
/// `w ~= (q - zero) * scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Grouped {
    pub rows: usize,
    pub cols: usize,
    pub group_size: usize,
    /// `[rows, cols]` codes, two per byte, low nibble first: `(rows * cols).div_ceil(2)` bytes.
    pub packed: Vec<u8>,
    /// `[rows, cols / group_size]` row-major.
    pub scales: Vec<f32>,
    /// `[rows, cols / group_size]` zero points in [0, 15], for the asymmetric scheme.
    pub zeros: Option<Vec<u8>>,
}

fn check_groups(rows: usize, cols: usize, group_size: usize) -> Result<(usize, usize), CodecError> {
    if group_size == 0 || !cols.is_multiple_of(group_size) {
        return Err(CodecError::Shape(format!(
            "group size {group_size} does not divide cols {cols}"
        )));
    }
    Ok((checked_elems(rows, cols)?, rows * (cols / group_size)))
}

/// Quantizes `[rows, cols]` row-major weights to INT4 with groups of `group_size` columns.
///
/// - `zero_point == false`: symmetric signed, `scale = amax / 7`, `q = clamp(rne(x / scale),
///   -8, 7)` (finite data stays in [-7, 7]).
/// - `zero_point == true`: asymmetric unsigned as AWQ's `pseudo_quantize_tensor`:
///   `scale = max(max - min, 1e-5) / 15`, `zero = clamp(-rne(min / scale), 0, 15)`,
///   `q = clamp(rne(x / scale) + zero, 0, 15)`, with min/max over the group's finite values
///   (0 for a group without any).
pub fn quantize_int4_grouped(
    w: &[f32],
    rows: usize,
    cols: usize,
    group_size: usize,
    zero_point: bool,
) -> Result<Int4Grouped, CodecError> {
    let (elems, groups) = check_groups(rows, cols, group_size)?;
    check_len("w", elems, w.len())?;
    let mut codes = Vec::with_capacity(elems);
    let mut scales = Vec::with_capacity(groups);
    let mut zeros = Vec::with_capacity(if zero_point { groups } else { 0 });
    for group in w.chunks(group_size) {
        if zero_point {
            let finite = || group.iter().copied().filter(|v| v.is_finite());
            let lo = finite().fold(f32::INFINITY, f32::min);
            let hi = finite().fold(f32::NEG_INFINITY, f32::max);
            let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
            // AWQ's clamp(min=1e-5) keeps a constant group from dividing by zero; the
            // `scale_from` fallback only catches an infinite range (finite values near ±MAX).
            let scale = scale_from((hi - lo).max(1e-5), UINT4_QMAX);
            let zero = round_clamp(-lo, scale, 0.0, UINT4_QMAX);
            scales.push(scale);
            zeros.push(zero as u8);
            // Only sums that land in [0, 15] survive the clamp, and those are exact.
            codes.extend(group.iter().map(|&x| {
                let q = (x / scale).round_ties_even();
                let q = if q.is_nan() {
                    zero
                } else {
                    (q + zero).clamp(0.0, UINT4_QMAX)
                };
                q as u8
            }));
        } else {
            let scale = scale_from(finite_amax(group), INT4_SYM_QMAX);
            scales.push(scale);
            codes.extend(
                group
                    .iter()
                    .map(|&x| i4_to_nibble(round_clamp(x, scale, -8.0, 7.0) as i8)),
            );
        }
    }
    Ok(Int4Grouped {
        rows,
        cols,
        group_size,
        packed: pack_nibbles(&codes),
        scales,
        zeros: zero_point.then_some(zeros),
    })
}

impl Int4Grouped {
    /// The dequantized `[rows, cols]` weights; an error if the fields disagree with each other.
    pub fn dequantize(&self) -> Result<Vec<f32>, CodecError> {
        let (elems, groups) = check_groups(self.rows, self.cols, self.group_size)?;
        check_len("packed", elems.div_ceil(2), self.packed.len())?;
        check_len("scales", groups, self.scales.len())?;
        if let Some(z) = &self.zeros {
            check_len("zeros", groups, z.len())?;
        }
        let mut out = Vec::with_capacity(elems);
        for i in 0..elems {
            let byte = self.packed[i / 2];
            let nibble = if i % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            let g = i / self.group_size;
            let v = match &self.zeros {
                // Integer difference first: (q - zero) is exact, then one rounding in the product.
                Some(z) => f32::from(i16::from(nibble) - i16::from(z[g])) * self.scales[g],
                None => f32::from(nibble_to_i4(nibble)) * self.scales[g],
            };
            out.push(v);
        }
        Ok(out)
    }
}
