//! Waiting for a collective against its deadline, and failing it: the completion poll (NCCL's
//! asynchronous state, then the completion event), the liveness probe while waiting, the peer
//! blamed in the error, and the abort that stops the kernels still waiting for a peer (see the
//! `nccl_group` module docs, **Deadlines** and **Naming the peer**).

use std::time::{Duration, Instant};

use moe_core::{Deadline, MoeError, Result};

use super::ffi::{self, async_state};
use super::liveness::Liveness;
use super::{Inner, NcclGroup, comm_err};

/// How often a waiting rank looks for peers whose process has exited.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long an abort waits for the aborted kernels to leave the stream.
const DRAIN_AFTER_ABORT: Duration = Duration::from_secs(10);

impl NcclGroup {
    /// The peer to blame for collective `seq`, and why.
    fn attribute(&self, seq: u64) -> Option<(usize, String)> {
        match &self.liveness {
            Some(l) => l.diagnose(seq),
            None if self.size == 2 => Some((1 - self.rank, format!("rank {} is the only peer", 1 - self.rank))),
            None => None,
        }
    }

    /// Aborts the communicator and waits a bounded time for its kernels to leave the stream;
    /// returns a note when they did not.
    fn abort(&self, inner: &mut Inner) -> String {
        ffi::comm_abort(&mut inner.data);
        if inner.comm.0.is_null() {
            return String::new();
        }
        ffi::comm_abort(&mut inner.comm);
        if let Err(e) = inner.done.record(self.dev.stream()) {
            return format!("; recording an event after the abort failed: {e}");
        }
        let until = Instant::now() + DRAIN_AFTER_ABORT;
        loop {
            match inner.done.try_is_complete() {
                Ok(true) => return String::new(),
                Ok(false) if Instant::now() < until => std::thread::sleep(Duration::from_millis(1)),
                Ok(false) => return "; the device stream was still busy after the abort".into(),
                Err(e) => return format!("; device error after the abort: {e}"),
            }
        }
    }

    /// Aborts the communicator and builds the error of collective `what`.
    pub(super) fn fail(&self, inner: &mut Inner, what: &str, why: String, known: Option<(usize, String)>) -> MoeError {
        let blame = known.or_else(|| self.attribute(inner.seq));
        let note = self.abort(inner);
        let who = match &blame {
            Some((_, w)) => w.clone(),
            None => format!("no peer identified among ranks 0..{}", self.size),
        };
        let detail = format!(
            "NCCL {what} (collective #{} of rank {} in ranks 0..{}, {}): {why}; {who}; communicator aborted{note}",
            inner.seq,
            self.rank,
            self.size,
            self.dev.location()
        );
        inner.broken = Some(detail.clone());
        comm_err(blame.map(|(p, _)| p), detail)
    }

    /// Polls until NCCL has set up the queued work, then (when `on_device`) until the device
    /// has finished it; fails at the deadline, on an NCCL error or on a peer's exit.
    pub(super) fn wait(&self, inner: &mut Inner, what: &str, deadline: Deadline, on_device: bool) -> Result<()> {
        let mut probe = Instant::now();
        let mut recorded = false;
        let (comm, _) = inner.active();
        loop {
            match async_state(comm) {
                Err(why) => return Err(self.fail(inner, what, why, None)),
                Ok(false) => {}
                Ok(true) if !on_device => return Ok(()),
                Ok(true) if !recorded => {
                    if let Err(e) = inner.done.record(self.dev.stream()) {
                        return Err(self.fail(inner, what, format!("recording the completion event: {e}"), None));
                    }
                    recorded = true;
                    continue;
                }
                Ok(true) => match inner.done.try_is_complete() {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(self.fail(inner, what, format!("device error: {e}"), None)),
                },
            }
            if deadline.expired() {
                return Err(self.fail(inner, what, "not complete at the deadline".into(), None));
            }
            if probe.elapsed() >= PROBE_EVERY {
                probe = Instant::now();
                if let Some(dead) = self.liveness.as_ref().and_then(Liveness::dead_peer) {
                    return Err(self.fail(inner, what, "a peer exited".into(), Some(dead)));
                }
            }
            std::thread::yield_now();
        }
    }
}
