//! Element types of tensors: the float types activations and weights use, and the byte
//! types that quantized formats pack their codes and scales into.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::MoeError;

/// Element type of a [`crate::Tensor`].
///
/// Byte types (`F8E4M3`, `E8M0`, `U8`, `I8`, packed `Fp4E2M1x2`) are stored as raw bytes;
/// their meaning is owned by the codecs in `moe-kernels` and the quant methods in `moe-quant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I64,
    U8,
    I8,
    /// FP8 e4m3fn (finite-only, max 448).
    F8E4M3,
    /// Power-of-two scale byte (UE8M0, bias 127), as MX formats use.
    E8M0,
    /// Two FP4 e2m1 codes per byte, low nibble first.
    #[serde(rename = "fp4x2")]
    Fp4E2M1x2,
}

impl DType {
    /// Bytes one stored element occupies (a packed FP4 byte holds two values).
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::U8 | DType::I8 | DType::F8E4M3 | DType::E8M0 | DType::Fp4E2M1x2 => 1,
        }
    }

    /// True for the float types activations and unquantized weights may use.
    pub fn is_float_activation(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Short name used in reports, configs and the CLI (`f32`, `bf16`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::F8E4M3 => "f8e4m3",
            DType::E8M0 => "e8m0",
            DType::Fp4E2M1x2 => "fp4x2",
        }
    }

    /// Parses the spellings Hugging Face configs use (`float32`, `bfloat16`, `torch.float16`)
    /// and the short names of [`DType::as_str`].
    pub fn parse(s: &str) -> Result<DType, MoeError> {
        let s = s.trim().trim_start_matches("torch.");
        Ok(match s {
            "float32" | "f32" | "float" | "fp32" => DType::F32,
            "float16" | "f16" | "half" | "fp16" => DType::F16,
            "bfloat16" | "bf16" => DType::BF16,
            "int32" | "i32" => DType::I32,
            "int64" | "i64" => DType::I64,
            "uint8" | "u8" => DType::U8,
            "int8" | "i8" => DType::I8,
            "float8_e4m3fn" | "f8e4m3" | "fp8" => DType::F8E4M3,
            "e8m0" | "float8_e8m0fnu" => DType::E8M0,
            "fp4x2" | "float4_e2m1fn_x2" => DType::Fp4E2M1x2,
            other => {
                return Err(MoeError::InvalidConfig {
                    field: "dtype".into(),
                    detail: format!("unknown dtype `{other}`"),
                });
            }
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = MoeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_spellings() {
        assert_eq!(DType::parse("bfloat16").unwrap(), DType::BF16);
        assert_eq!(DType::parse("torch.float32").unwrap(), DType::F32);
        assert_eq!(DType::parse("float16").unwrap(), DType::F16);
        assert!(DType::parse("complex64").is_err());
    }

    #[test]
    fn short_names_round_trip() {
        for d in [DType::F32, DType::F16, DType::BF16, DType::F8E4M3, DType::Fp4E2M1x2] {
            assert_eq!(DType::parse(d.as_str()).unwrap(), d);
        }
    }
}
