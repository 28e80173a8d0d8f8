//! Reading and writing one slot's share of a per-slot tensor `[num_local_slots, ...]`.

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
        return Err(MoeError::shape(what, format!("slot {slot} of {} x {per}", t.rows()), &[data.len()]));
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
            })
        }
    }
    Ok(())
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
            })
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
}
