//! A process group over MPI (Open MPI through the `mpi` crate), one rank per process.
//!
//! Collectives are built from non-blocking point-to-point messages polled against the
//! deadline, because MPI's blocking collectives cannot time out: a peer that stalls makes
//! this rank fail with `MoeError::Comm` naming it (its pending requests are cancelled),
//! instead of hanging. Every collective uses its own tag (a sequence number), so messages of
//! a timed-out round never match a later one.

use std::sync::Mutex;

use moe_core::{DType, Deadline, MoeError, ProcessGroup, Result, Tensor, TensorView};
use mpi::Threading;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{LocalScope, Request, scope};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::rows::{check_counts, split_rows_by_counts, sum_tensors};

struct Inner {
    // Dropping the universe finalizes MPI; it lives as long as the group.
    _universe: Universe,
    world: SimpleCommunicator,
    seq: i32,
}

/// The MPI world as a process group.
pub struct MpiGroup {
    rank: usize,
    size: usize,
    inner: Mutex<Inner>,
}

// SAFETY: MPI is initialized with at least `Threading::Serialized` (checked in `init`), which
// allows calls from any thread as long as they never overlap; every MPI call of this type
// happens while holding `inner`'s mutex, so calls are serialized.
unsafe impl Send for MpiGroup {}
// SAFETY: as above: shared references only reach MPI through the mutex.
unsafe impl Sync for MpiGroup {}

impl std::fmt::Debug for MpiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiGroup")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

fn comm_err(peer: Option<usize>, detail: impl Into<String>) -> MoeError {
    MoeError::Comm {
        peer,
        detail: detail.into(),
    }
}

impl MpiGroup {
    /// Initializes MPI (once per process) and returns the world group.
    pub fn init() -> Result<MpiGroup> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| comm_err(None, "MPI was already initialized in this process"))?;
        if threading < Threading::Serialized {
            return Err(comm_err(
                None,
                format!("the MPI library offers only {threading:?} threading"),
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiGroup {
            rank,
            size,
            inner: Mutex::new(Inner {
                _universe: universe,
                world,
                seq: 0,
            }),
        })
    }

    /// Sends `sends[p]` to every peer p and receives `recv_lens[p]` bytes from every peer,
    /// polling until `deadline`. The entry of this rank is copied locally.
    fn exchange(&self, sends: &[Vec<u8>], recv_lens: &[usize], deadline: Deadline) -> Result<Vec<Vec<u8>>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seq = (inner.seq % 30_000) + 1;
        let tag = inner.seq;
        let world = &inner.world;
        let mut bufs: Vec<Vec<u8>> = recv_lens.iter().map(|&n| vec![0u8; n]).collect();
        bufs[self.rank] = sends[self.rank].clone();
        let me = self.rank;
        let outcome = scope(|sc| {
            // (peer, is a receive, its request)
            type Pending<'a, 's> = (usize, bool, Request<'a, [u8], &'s LocalScope<'a>>);
            let mut pending: Vec<Pending<'_, '_>> = Vec::new();
            for (peer, buf) in bufs.iter_mut().enumerate() {
                if peer != me {
                    let req = world
                        .process_at_rank(peer as i32)
                        .immediate_receive_into_with_tag(sc, &mut buf[..], tag);
                    pending.push((peer, true, req));
                }
            }
            for (peer, data) in sends.iter().enumerate() {
                if peer != me {
                    let req = world
                        .process_at_rank(peer as i32)
                        .immediate_send_with_tag(sc, &data[..], tag);
                    pending.push((peer, false, req));
                }
            }
            loop {
                let mut still = Vec::with_capacity(pending.len());
                for (peer, is_recv, req) in pending {
                    match req.test() {
                        Ok(_) => {}
                        Err(req) => still.push((peer, is_recv, req)),
                    }
                }
                pending = still;
                if pending.is_empty() {
                    return Ok(());
                }
                if deadline.expired() {
                    let stalled = pending.iter().find(|p| p.1).or(pending.first()).map(|p| p.0);
                    for (_, _, req) in pending {
                        // Cancelled requests complete, so the scope can end cleanly.
                        req.cancel();
                        req.wait();
                    }
                    return Err(comm_err(
                        stalled,
                        format!(
                            "rank {} did not take part in collective {tag} before the deadline",
                            stalled.unwrap_or(0)
                        ),
                    ));
                }
                std::thread::yield_now();
            }
        });
        outcome.map(|()| bufs)
    }
}

fn bytes_of(t: &Tensor) -> Result<Vec<u8>> {
    Ok(t.view()?.data.into_owned())
}

fn row_bytes(t: &Tensor) -> usize {
    t.row_len() * t.dtype().size_in_bytes()
}

fn tensor_from(dtype: DType, rows: usize, row_shape: &[usize], data: Vec<u8>) -> Result<Tensor> {
    let mut shape = vec![rows];
    shape.extend_from_slice(row_shape);
    TensorView {
        dtype,
        shape,
        data: data.into(),
    }
    .to_tensor("received rows")
}

impl ProcessGroup for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        "mpi"
    }

    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_counts(counts, self.size(), "all_gather_v counts")?;
        let mine = bytes_of(local)?;
        let rb = row_bytes(local);
        let recv: Vec<usize> = counts.iter().map(|c| c * rb).collect();
        let parts = self.exchange(&vec![mine; self.size], &recv, deadline)?;
        let tensors = parts
            .into_iter()
            .zip(counts)
            .map(|(b, &n)| tensor_from(local.dtype(), n, &local.shape()[1..], b))
            .collect::<Result<Vec<_>>>()?;
        Tensor::concat_rows(&tensors)
    }

    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_counts(counts, self.size(), "reduce_scatter_v counts")?;
        let blocks = split_rows_by_counts(full, counts)?;
        let sends = blocks.iter().map(bytes_of).collect::<Result<Vec<_>>>()?;
        let n = counts[self.rank];
        let recv = vec![n * row_bytes(full); self.size];
        let parts = self.exchange(&sends, &recv, deadline)?;
        let tensors = parts
            .into_iter()
            .map(|b| tensor_from(full.dtype(), n, &full.shape()[1..], b))
            .collect::<Result<Vec<_>>>()?;
        sum_tensors(&tensors.iter().collect::<Vec<_>>())
    }

    fn all_to_all_v(
        &self,
        send: &Tensor,
        send_counts: &[usize],
        recv_counts: &[usize],
        deadline: Deadline,
    ) -> Result<Tensor> {
        check_counts(send_counts, self.size(), "all_to_all_v send counts")?;
        check_counts(recv_counts, self.size(), "all_to_all_v recv counts")?;
        let sends = split_rows_by_counts(send, send_counts)?
            .iter()
            .map(bytes_of)
            .collect::<Result<Vec<_>>>()?;
        let rb = row_bytes(send);
        let recv: Vec<usize> = recv_counts.iter().map(|c| c * rb).collect();
        let parts = self.exchange(&sends, &recv, deadline)?;
        let tensors = parts
            .into_iter()
            .zip(recv_counts)
            .map(|(b, &n)| tensor_from(send.dtype(), n, &send.shape()[1..], b))
            .collect::<Result<Vec<_>>>()?;
        Tensor::concat_rows(&tensors)
    }

    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor> {
        let mine = bytes_of(t)?;
        let len = mine.len();
        let parts = self.exchange(&vec![mine; self.size], &vec![len; self.size], deadline)?;
        let tensors = parts
            .into_iter()
            .map(|b| {
                TensorView {
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    data: b.into(),
                }
                .to_tensor("all_reduce part")
            })
            .collect::<Result<Vec<_>>>()?;
        sum_tensors(&tensors.iter().collect::<Vec<_>>())
    }

    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>> {
        let mine = (value as u64).to_le_bytes().to_vec();
        let parts = self.exchange(&vec![mine; self.size], &vec![8; self.size], deadline)?;
        parts
            .into_iter()
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
