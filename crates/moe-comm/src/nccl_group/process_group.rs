//! The collectives of [`ProcessGroup`] over NCCL: each checks its operands, builds the list of
//! NCCL calls (and the own block's local copy) over fresh output buffers, runs it as one
//! collective and returns the result in the caller's storage kind. Sums run on the device in
//! f32 in rank order, like the host groups (see the `nccl_group` module docs, **Sums**).

use moe_core::{DType, Deadline, HostStorage, MoeError, ProcessGroup, Result, Tensor};
use moe_kernels::cuda::{OwnBlock, sum_blocks, sum_blocks_with};

use super::ffi::{LocalCopy, Op};
use super::launch::{check_float, offsets, row_bytes, with_rows};
use super::{NcclGroup, comm_err};
use crate::rows::{check_counts, check_gather_input, check_split_rows};

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        "nccl"
    }

    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        let mut out = self.all_gather_v_many(&[local], counts, deadline)?;
        out.pop()
            .ok_or_else(|| MoeError::lifecycle("NCCL all_gather_v: no output"))
    }

    /// Every tensor's gather in one NCCL group: one launch and one completion wait for all.
    fn all_gather_v_many(&self, locals: &[&Tensor], counts: &[usize], deadline: Deadline) -> Result<Vec<Tensor>> {
        let total: usize = counts.iter().sum();
        let mut ops = Vec::new();
        let mut outs = Vec::with_capacity(locals.len());
        for local in locals {
            check_gather_input(local, counts, self.rank, self.size())?;
            let host = local.is_host();
            let local = self.operand(local, "all_gather_v input")?;
            let rb = row_bytes(&local);
            let (out, recv) = self.buffer(total * rb)?;
            let byte_counts: Vec<usize> = counts.iter().map(|c| c * rb).collect();
            ops.extend(self.gather_ops(self.addr(&local)?, recv, &byte_counts));
            // The operand (an upload of a host tensor) lives until the collective has finished.
            outs.push((
                self.dev.tensor(local.dtype(), with_rows(&local, total), out),
                host,
                local,
            ));
        }
        self.run("all_gather_v", &ops, &[], deadline)?;
        outs.into_iter().map(|(t, host, _)| Self::finish(t, host)).collect()
    }

    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_counts(counts, self.size(), "reduce_scatter_v counts")?;
        check_float(full, "reduce_scatter_v input")?;
        check_split_rows(full, counts)?;
        let host = full.is_host();
        let full = self.operand(full, "reduce_scatter_v input")?;
        let rb = row_bytes(&full);
        let (me, n) = (self.rank, counts[self.rank]);
        // The peers' blocks arrive side by side in rank order; the own block is summed where
        // it is, never copied or sent to itself.
        let (blocks, recv) = self.buffer((self.size - 1) * n * rb)?;
        let send = self.addr(&full)?;
        let mut ops = Vec::with_capacity(2 * self.size);
        let starts = offsets(counts);
        let own_at = starts[me];
        for (peer, (&c, o)) in counts.iter().zip(starts).enumerate().filter(|&(q, _)| q != me) {
            let slot = peer - usize::from(peer > me);
            ops.extend(Op::swap(
                peer,
                (send + (o * rb) as u64, c * rb),
                (recv + (slot * n * rb) as u64, n * rb),
            ));
        }
        self.run("reduce_scatter_v", &ops, &[], deadline)?;
        let blocks = self
            .dev
            .tensor(full.dtype(), with_rows(&full, (self.size - 1) * n), blocks);
        let own = OwnBlock {
            index: me,
            tensor: &full,
            first: own_at * full.row_len(),
        };
        Self::finish(
            sum_blocks_with(&blocks, Some(own), self.size, with_rows(&full, n))?,
            host,
        )
    }

    fn all_to_all_v(
        &self,
        send: &Tensor,
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Tensor> {
        let mut out = self.all_to_all_v_many(&[send], send_counts, recv_counts, deadline)?;
        out.pop()
            .ok_or_else(|| MoeError::lifecycle("NCCL all_to_all_v: no output"))
    }

    /// Every tensor's blocks in one NCCL group: one launch and one completion wait for all.
    fn all_to_all_v_many(
        &self,
        sends: &[&Tensor],
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Vec<Tensor>> {
        check_counts(send_counts, self.size(), "all_to_all_v send counts")?;
        check_counts(recv_counts, self.size(), "all_to_all_v recv counts")?;
        // The own block is a device copy on the side stream, not an NCCL send to itself.
        let me = self.rank;
        if send_counts[me] != recv_counts[me] {
            return Err(MoeError::config(
                "all_to_all_v counts",
                format!(
                    "rank {me} sends itself {} rows but expects {}",
                    send_counts[me], recv_counts[me]
                ),
            ));
        }
        let total: usize = recv_counts.iter().sum();
        let (so, ro) = (offsets(send_counts), offsets(recv_counts));
        let mut ops = Vec::with_capacity(2 * self.size * sends.len());
        let mut local = Vec::with_capacity(sends.len());
        let mut outs = Vec::with_capacity(sends.len());
        for send in sends {
            check_split_rows(send, send_counts)?;
            let host = send.is_host();
            let send = self.operand(send, "all_to_all_v input")?;
            let rb = row_bytes(&send);
            let (out, recv) = self.buffer(total * rb)?;
            let from = self.addr(&send)?;
            local.push(LocalCopy {
                dst: recv + (ro[me] * rb) as u64,
                src: from + (so[me] * rb) as u64,
                bytes: send_counts[me] * rb,
            });
            for peer in (0..self.size).filter(|&q| q != me) {
                ops.extend(Op::swap(
                    peer,
                    (from + (so[peer] * rb) as u64, send_counts[peer] * rb),
                    (recv + (ro[peer] * rb) as u64, recv_counts[peer] * rb),
                ));
            }
            // The operand (an upload of a host tensor) lives until the collective has finished.
            outs.push((self.dev.tensor(send.dtype(), with_rows(&send, total), out), host, send));
        }
        self.run("all_to_all_v", &ops, &local, deadline)?;
        outs.into_iter().map(|(t, host, _)| Self::finish(t, host)).collect()
    }

    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor> {
        check_float(t, "all_reduce_sum input")?;
        let host = t.is_host();
        let t = self.operand(t, "all_reduce_sum input")?;
        let (numel, esz, p) = (t.numel(), t.dtype().size_in_bytes(), self.size);
        // Rank r sums elements [r * chunk, r * chunk + len(r)) of every rank, then every rank
        // gathers the sums: a reduce-scatter and an all-gather, like a ring all-reduce, with
        // the sums in f32 in rank order.
        let chunk = numel.div_ceil(p);
        let len = |r: usize| numel.saturating_sub(r * chunk).min(chunk);
        let mine = len(self.rank);
        let (blocks, recv) = self.buffer(p * mine * esz)?;
        let from = self.addr(&t)?;
        let mut ops = Vec::with_capacity(2 * p);
        for peer in 0..p {
            ops.extend(Op::swap(
                peer,
                (from + (peer * chunk * esz) as u64, len(peer) * esz),
                (recv + (peer * mine * esz) as u64, mine * esz),
            ));
        }
        self.run("all_reduce_sum (reduce-scatter half)", &ops, &[], deadline)?;
        let blocks = self.dev.tensor(t.dtype(), vec![p * mine], blocks);
        let part = sum_blocks(&blocks, p, vec![mine])?;
        let (out, dst) = self.buffer(numel * esz)?;
        let byte_counts: Vec<usize> = (0..p).map(|r| len(r) * esz).collect();
        let ops = self.gather_ops(self.addr(&part)?, dst, &byte_counts);
        self.run("all_reduce_sum (all-gather half)", &ops, &[], deadline)?;
        Self::finish(self.dev.tensor(t.dtype(), t.shape().to_vec(), out), host)
    }

    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>> {
        let mine = Tensor::from_host(
            DType::I64,
            vec![1, 1],
            HostStorage::Bytes((value as u64).to_le_bytes().to_vec()),
        )?;
        let all = self.all_gather_v(&mine, &vec![1; self.size], deadline)?;
        let bytes = match all.host("gathered values")? {
            HostStorage::Bytes(b) => b.clone(),
            _ => return Err(comm_err(None, "all_gather_usize: gathered values are not bytes")),
        };
        bytes
            .chunks_exact(8)
            .enumerate()
            .map(|(r, b)| {
                let arr: [u8; 8] = b.try_into().map_err(|_| comm_err(Some(r), "sent a malformed count"))?;
                usize::try_from(u64::from_le_bytes(arr)).map_err(|_| comm_err(Some(r), "sent a count beyond usize"))
            })
            .collect()
    }

    fn barrier(&self, deadline: Deadline) -> Result<()> {
        self.all_gather_usize(0, deadline).map(|_| ())
    }
}
