//! Queueing one collective: its NCCL calls as one group on the device's stream, the rank's own
//! block copied on the side stream meanwhile, then the completion wait; and what the
//! collectives build their call lists from (operands on the group's device, fresh output
//! buffers and their addresses, gathers as one all-gather or one broadcast per rank, row
//! arithmetic).

use cudarc::driver::{DevicePtr, DevicePtrMut, DriverError};
use cudarc::nccl::{result as nccl, sys};
use moe_core::{Deadline, MoeError, Result, Storage, Tensor};
use moe_kernels::cuda::{CudaStorage, download};

use super::ffi::{self, LocalCopy, Op, issue, last_error};
use super::{Inner, NcclGroup, comm_err};

/// Bytes of one row of `t`.
pub(super) fn row_bytes(t: &Tensor) -> usize {
    t.row_len() * t.dtype().size_in_bytes()
}

/// `t`'s shape with `rows` leading rows.
pub(super) fn with_rows(t: &Tensor, rows: usize) -> Vec<usize> {
    let mut shape = t.shape().to_vec();
    match shape.first_mut() {
        Some(first) => *first = rows,
        None => shape.push(rows),
    }
    shape
}

pub(super) fn check_float(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype().is_float_activation() {
        Ok(())
    } else {
        Err(MoeError::DTypeMismatch {
            what: what.into(),
            expected: "f32, bf16 or f16".into(),
            actual: t.dtype().to_string(),
        })
    }
}

/// Row offsets (in rows) of consecutive blocks of `counts` rows.
pub(super) fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let o = *acc;
            *acc += c;
            Some(o)
        })
        .collect()
}

impl NcclGroup {
    /// Runs `ops` as one NCCL group on the device's stream, with the `local` blocks copied on
    /// the side stream meanwhile, and waits for both.
    pub(super) fn run(&self, what: &str, ops: &[Op], local: &[LocalCopy], deadline: Deadline) -> Result<()> {
        let mut inner = self.lock();
        if let Some(why) = &inner.broken {
            return Err(comm_err(
                None,
                format!("NCCL {what}: the communicator was aborted earlier: {why}"),
            ));
        }
        inner.seq += 1;
        if let Some(l) = &self.liveness {
            l.enter(inner.seq);
        }
        let ops: Vec<&Op> = ops.iter().filter(|o| o.bytes() > 0).collect();
        let local: Vec<&LocalCopy> = local.iter().filter(|c| c.bytes > 0).collect();
        if ops.is_empty() && local.is_empty() {
            return Ok(());
        }
        let stream = self.dev.stream();
        if let Err(e) = stream.context().bind_to_thread() {
            return Err(self.fail(&mut inner, what, format!("binding the context: {e}"), None));
        }
        if !local.is_empty()
            && let Err(e) = self.copy_local(&inner, &local)
        {
            return Err(self.fail(&mut inner, what, format!("copying the local block: {e}"), None));
        }
        if ops.is_empty() {
            if let Err(e) = stream.wait(&inner.joined) {
                return Err(self.fail(&mut inner, what, format!("joining the side stream: {e}"), None));
            }
            return self.wait(&mut inner, what, deadline, true);
        }
        let cu_stream = stream.cu_stream() as sys::cudaStream_t;
        let (comm, _) = inner.active();
        let mut issued = nccl::group_start()
            .map(|_| ())
            .map_err(|e| format!("ncclGroupStart: {:?}", e.0));
        if issued.is_ok() {
            for op in &ops {
                if let Err(e) = issue(comm, cu_stream, op) {
                    issued = Err(format!("queueing {op:?}: {:?} {}", e.0, last_error(comm)));
                    break;
                }
            }
            // The group is closed whatever happened inside it.
            if let Err(e) = nccl::group_end() {
                issued = issued.and(Err(format!("ncclGroupEnd: {:?} {}", e.0, last_error(comm))));
            }
        }
        if let Err(why) = issued {
            return Err(self.fail(&mut inner, what, why, None));
        }
        if !local.is_empty()
            && let Err(e) = stream.wait(&inner.joined)
        {
            return Err(self.fail(&mut inner, what, format!("joining the side stream: {e}"), None));
        }
        self.wait(&mut inner, what, deadline, true)
    }

    /// Queues the copies on the side stream after everything queued so far on the device's
    /// stream, and records `joined` after them (the caller makes the device's stream wait for it).
    fn copy_local(&self, inner: &Inner, copies: &[&LocalCopy]) -> std::result::Result<(), DriverError> {
        let stream = self.dev.stream();
        inner.fork.record(stream)?;
        inner.side.wait(&inner.fork)?;
        // Ordered after the operands' producers by `fork`; the device's stream (on which the
        // buffers are freed) waits for `joined` before anything later.
        ffi::copy_blocks_async(copies, &inner.side)?;
        if let Err(e) = inner.joined.record(&inner.side) {
            // The device's stream must not run past the copy: make it wait for the whole side
            // stream instead.
            stream.join(&inner.side)?;
            return Err(e);
        }
        Ok(())
    }

    /// `t` on this group's device: uploaded when it is a host tensor.
    pub(super) fn operand(&self, t: &Tensor, what: &str) -> Result<Tensor> {
        match t.storage() {
            Storage::Host(_) => self.dev.upload(t),
            Storage::Device(_) => {
                let s = CudaStorage::of(t, what)?;
                if s.device().ordinal() != self.dev.ordinal() {
                    return Err(MoeError::Backend(
                        format!(
                            "{what} lives on {}, but this rank's NCCL communicator runs on {}",
                            s.device().location(),
                            self.dev.location()
                        )
                        .into(),
                    ));
                }
                Ok(t.clone())
            }
        }
    }

    /// Device address of a device tensor's buffer.
    pub(super) fn addr(&self, t: &Tensor) -> Result<u64> {
        let s = CudaStorage::of(t, "NCCL operand")?;
        let (p, _sync) = s.bytes().device_ptr(self.dev.stream());
        Ok(p)
    }

    /// A fresh device buffer of `bytes` bytes and its address.
    pub(super) fn buffer(&self, bytes: usize) -> Result<(CudaStorage, u64)> {
        let mut s = self.dev.alloc_storage(bytes)?;
        let p = {
            let (p, _sync) = s.bytes_mut().device_ptr_mut(self.dev.stream());
            p
        };
        Ok((s, p))
    }

    /// The result in the caller's storage kind: downloaded when the input was a host tensor.
    pub(super) fn finish(t: Tensor, host: bool) -> Result<Tensor> {
        if host { download(&t) } else { Ok(t) }
    }

    /// Gathers `counts[r]` bytes from every rank r (`send` on this rank) into `recv`, rank order.
    pub(super) fn gather_ops(&self, send: u64, recv: u64, counts: &[usize]) -> Vec<Op> {
        if counts.iter().all(|&c| c == counts[0]) {
            return vec![Op::AllGather {
                send,
                recv,
                bytes: counts[0],
            }];
        }
        let mut at = 0u64;
        counts
            .iter()
            .enumerate()
            .map(|(root, &bytes)| {
                let dst = recv + at;
                at += bytes as u64;
                Op::Broadcast {
                    send: if root == self.rank { send } else { dst },
                    recv: dst,
                    bytes,
                    root,
                }
            })
            .collect()
    }
}
