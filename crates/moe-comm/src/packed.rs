//! Packed all-gather, the small-batch latency strategy: at decode sizes a collective's fixed
//! cost dominates its bytes, so dispatch packs each token's activations, activation scales,
//! slots and weights into one byte row and moves everything in ONE all-gather (AllGather+
//! ReduceScatter needs four), then combine reduce-scatters as usual. Feasible while the
//! gathered rows fit its staging budget; the factory prefers it for small batches. Device
//! payloads are packed and unpacked on their device (`moe_kernels::cuda::{pack_rows,
//! unpack_rows}`), host ones on the host.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::allgather::{gather_counts, reduce_to_owners};
use moe_core::{Communication, DType, Deadline, DispatchPayload, MoeError, ProcessGroup, Result, Tensor, TensorView};

/// One-collective dispatch for small batches.
pub struct PackedAllGather {
    group: Arc<dyn ProcessGroup>,
    timeout: Duration,
    /// Most gathered rows (all ranks, one chunk) this strategy accepts.
    max_rows: usize,
    counts: Option<Vec<usize>>,
}

/// Byte layout of one packed row: each field's dtype and per-row element count.
struct Field {
    dtype: DType,
    row_shape: Vec<usize>,
}

impl Field {
    fn of(t: &Tensor) -> Field {
        Field {
            dtype: t.dtype(),
            row_shape: t.shape()[1..].to_vec(),
        }
    }

    fn row_bytes(&self) -> usize {
        self.row_shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

impl PackedAllGather {
    pub fn new(group: Arc<dyn ProcessGroup>, timeout: Duration, max_rows: usize) -> Self {
        PackedAllGather {
            group,
            timeout,
            max_rows,
            counts: None,
        }
    }
}

/// Packs the fields' rows side by side; on the device when any field lives there.
fn pack(parts: &[&Tensor]) -> Result<Tensor> {
    if parts.iter().any(|t| !t.is_host()) {
        return moe_kernels::cuda::pack_rows(parts);
    }
    let rows = parts[0].rows();
    let views = parts.iter().map(|t| t.view()).collect::<Result<Vec<_>>>()?;
    let widths: Vec<usize> = parts.iter().map(|t| Field::of(t).row_bytes()).collect();
    let total: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * total);
    for r in 0..rows {
        for (v, w) in views.iter().zip(&widths) {
            out.extend_from_slice(&v.data[r * w..(r + 1) * w]);
        }
    }
    Tensor::from_host(DType::U8, vec![rows, total], moe_core::HostStorage::Bytes(out))
}

/// Splits packed rows back into the fields, where the packed rows live.
fn unpack(packed: &Tensor, fields: &[Field]) -> Result<Vec<Tensor>> {
    if !packed.is_host() {
        let fields: Vec<(DType, Vec<usize>)> = fields.iter().map(|f| (f.dtype, f.row_shape.clone())).collect();
        return moe_kernels::cuda::unpack_rows(packed, &fields);
    }
    let bytes = packed.as_bytes("packed rows")?;
    let rows = packed.rows();
    let total: usize = fields.iter().map(Field::row_bytes).sum();
    let mut offset = 0;
    fields
        .iter()
        .map(|f| {
            let w = f.row_bytes();
            let mut data = Vec::with_capacity(rows * w);
            for r in 0..rows {
                data.extend_from_slice(&bytes[r * total + offset..r * total + offset + w]);
            }
            offset += w;
            let mut shape = vec![rows];
            shape.extend(&f.row_shape);
            TensorView {
                dtype: f.dtype,
                shape,
                data: Cow::Owned(data),
            }
            .to_tensor("packed field")
        })
        .collect()
}

impl Communication for PackedAllGather {
    fn name(&self) -> &'static str {
        "packed"
    }

    fn is_platform_supported(&self) -> bool {
        true
    }

    fn is_workload_feasible(&self, all_rank_num_tokens: &[usize], num_chunks: usize) -> bool {
        let max = all_rank_num_tokens.iter().copied().max().unwrap_or(0);
        max.div_ceil(num_chunks.max(1)) * all_rank_num_tokens.len() <= self.max_rows
    }

    fn is_alltoall(&self) -> bool {
        // Not an all-to-all, but it shares the fallback rule: beyond its budget the
        // assembler swaps it for AllGather+ReduceScatter.
        true
    }

    fn dispatch<'a>(
        &mut self,
        p: DispatchPayload<'a>,
        list: &[usize],
        use_dp_padding: bool,
    ) -> Result<DispatchPayload<'a>> {
        self.counts = gather_counts(self.group.as_ref(), list, use_dp_padding)?;
        let Some(counts) = self.counts.clone() else {
            return Ok(p);
        };
        // Every rank packs the same field list: scales and x_sf presence follow the layer's
        // config, identical on all ranks.
        let mut parts: Vec<&Tensor> = vec![&*p.x, &p.slots];
        parts.extend(p.x_sf.as_ref());
        parts.extend(p.scales.as_ref());
        let fields: Vec<Field> = parts.iter().map(|t| Field::of(t)).collect();
        let packed = pack(&parts)?;
        let gathered = self
            .group
            .all_gather_v(&packed, &counts, Deadline::after(self.timeout))?;
        let mut out = unpack(&gathered, &fields)?.into_iter();
        let mut next = || {
            out.next()
                .ok_or_else(|| MoeError::lifecycle("packed dispatch lost a field"))
        };
        let x = Cow::Owned(next()?);
        let slots = next()?;
        let x_sf = if p.x_sf.is_some() { Some(next()?) } else { None };
        let scales = if p.scales.is_some() { Some(next()?) } else { None };
        Ok(DispatchPayload { x, x_sf, slots, scales })
    }

    fn combine(&mut self, out: Tensor, _: usize) -> Result<Tensor> {
        reduce_to_owners(
            self.group.as_ref(),
            self.counts.take(),
            &out,
            Deadline::after(self.timeout),
        )
    }

    fn destroy(&mut self) -> Result<()> {
        self.group.barrier(Deadline::after(self.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trips_mixed_dtypes() {
        let x = Tensor::from_f32_as(DType::BF16, vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let s = Tensor::from_i32(vec![2, 2], vec![0, 7, 3, 1]).unwrap();
        let w = Tensor::from_f32(vec![2, 2], vec![0.25, 0.75, 0.5, 0.5]).unwrap();
        let packed = pack(&[&x, &s, &w]).unwrap();
        assert_eq!(packed.shape(), &[2, 3 * 2 + 2 * 4 + 2 * 4]);
        let back = unpack(&packed, &[Field::of(&x), Field::of(&s), Field::of(&w)]).unwrap();
        assert_eq!(back[0].to_f32_vec("x").unwrap(), x.to_f32_vec("x").unwrap());
        assert_eq!(back[1].as_i32("s").unwrap(), s.as_i32("s").unwrap());
        assert_eq!(back[2].as_f32("w").unwrap(), w.as_f32("w").unwrap());
    }
}
