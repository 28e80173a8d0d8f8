//! Reading and writing one slot's share of a per-slot tensor `[num_local_slots, ...]`: float
//! tensors through f32 (converted to the tensor's dtype), byte tensors (codes and scales of
//! the quantized formats) as raw bytes, and borrowed views of one slot for the kernels.

use half::slice::HalfFloatSliceExt;
use moe_core::{HostStorage, MoeError, Result, Tensor};

/// Elements of one slot's share of `t`.
fn slot_len(t: &Tensor) -> usize {
    t.row_len()
}

/// Overwrites slot `slot` of the float tensor `t` with `data` (f32), converting to `t`'s
/// dtype with round-to-nearest-even. `what` names the tensor in errors.
pub fn write_slot(t: &mut Tensor, what: &str, slot: usize, data: &[f32]) -> Result<()> {
    let per = slot_len(t);
    if data.len() != per || slot >= t.rows() {
        return Err(MoeError::shape(
            what,
            format!("slot {slot} of {} x {per}", t.rows()),
            &[data.len()],
        ));
    }
    let range = slot * per..(slot + 1) * per;
    let dtype = t.dtype();
    match t.host_mut(what)? {
        HostStorage::F32(v) => v[range].copy_from_slice(data),
        HostStorage::F16(v) => v[range].convert_from_f32_slice(data),
        HostStorage::BF16(v) => v[range].convert_from_f32_slice(data),
        _ => {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "f32, f16 or bf16".into(),
                actual: dtype.to_string(),
            });
        }
    }
    Ok(())
}

/// Elements of slot `slot` of `t`, or a shape error naming `what`.
fn slot_range(t: &Tensor, what: &str, slot: usize) -> Result<std::ops::Range<usize>> {
    let per = slot_len(t);
    if slot >= t.rows() {
        return Err(MoeError::shape(what, format!("more than {slot} slots"), t.shape()));
    }
    Ok(slot * per..(slot + 1) * per)
}

/// Overwrites slot `slot` of the byte tensor `t` (FP8, FP4, E8M0, u8, i8 codes and scales)
/// with `data`.
pub fn write_slot_bytes(t: &mut Tensor, what: &str, slot: usize, data: &[u8]) -> Result<()> {
    let range = slot_range(t, what, slot)?;
    if data.len() != range.len() {
        return Err(MoeError::shape(
            what,
            format!("slot of {} bytes", range.len()),
            &[data.len()],
        ));
    }
    let dtype = t.dtype();
    match t.host_mut(what)? {
        HostStorage::Bytes(v) if dtype.size_in_bytes() == 1 => v[range].copy_from_slice(data),
        _ => {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "a one-byte dtype".into(),
                actual: dtype.to_string(),
            });
        }
    }
    Ok(())
}

/// Slot `slot` of the byte tensor `t`, borrowed.
pub fn slot_bytes<'a>(t: &'a Tensor, what: &str, slot: usize) -> Result<&'a [u8]> {
    let range = slot_range(t, what, slot)?;
    if t.dtype().size_in_bytes() != 1 {
        return Err(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "a one-byte dtype".into(),
            actual: t.dtype().to_string(),
        });
    }
    Ok(&t.as_bytes(what)?[range])
}

/// Slot `slot` of the f32 tensor `t`, borrowed.
pub fn slot_f32<'a>(t: &'a Tensor, what: &str, slot: usize) -> Result<&'a [f32]> {
    let range = slot_range(t, what, slot)?;
    Ok(&t.as_f32(what)?[range])
}

/// Slot `slot` of the float tensor `t`, widened to f32.
pub fn read_slot(t: &Tensor, what: &str, slot: usize) -> Result<Vec<f32>> {
    let per = slot_len(t);
    if slot >= t.rows() {
        return Err(MoeError::shape(what, format!("more than {slot} slots"), t.shape()));
    }
    let range = slot * per..(slot + 1) * per;
    Ok(match t.host(what)? {
        HostStorage::F32(v) => v[range].to_vec(),
        HostStorage::F16(v) => v[range].to_f32_vec(),
        HostStorage::BF16(v) => v[range].to_f32_vec(),
        _ => {
            return Err(MoeError::DTypeMismatch {
                what: what.into(),
                expected: "f32, f16 or bf16".into(),
                actual: t.dtype().to_string(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::DType;

    #[test]
    fn write_rounds_to_nearest_even_and_reads_back() {
        let mut t = Tensor::zeros(DType::BF16, vec![2, 2]);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        write_slot(&mut t, "t", 1, &[1.0 + 1.0 / 256.0, 3.0]).unwrap();
        assert_eq!(read_slot(&t, "t", 1).unwrap(), vec![1.0, 3.0]);
        assert_eq!(read_slot(&t, "t", 0).unwrap(), vec![0.0, 0.0]);
        assert!(write_slot(&mut t, "t", 2, &[0.0, 0.0]).is_err());
        assert!(write_slot(&mut t, "t", 0, &[0.0]).is_err());
    }

    #[test]
    fn byte_slots_and_borrowed_views() {
        let mut t = Tensor::zeros(DType::F8E4M3, vec![3, 2]);
        write_slot_bytes(&mut t, "t", 1, &[7, 8]).unwrap();
        assert_eq!(slot_bytes(&t, "t", 1).unwrap(), &[7, 8]);
        assert_eq!(slot_bytes(&t, "t", 2).unwrap(), &[0, 0]);
        assert!(write_slot_bytes(&mut t, "t", 3, &[0, 0]).is_err());
        assert!(write_slot_bytes(&mut t, "t", 0, &[0]).is_err());
        let mut f = Tensor::zeros(DType::F32, vec![2]);
        assert!(write_slot_bytes(&mut f, "f", 0, &[0]).is_err());
        write_slot(&mut f, "f", 1, &[2.5]).unwrap();
        assert_eq!(slot_f32(&f, "f", 1).unwrap(), &[2.5]);
        assert!(slot_f32(&t, "t", 0).is_err());
        assert!(slot_bytes(&f, "f", 0).is_err());
    }
}
