//! A process group whose ranks are threads of one process. Every collective is one
//! "exchange" round on a shared board: each rank posts its contribution and waits, until the
//! deadline, for all others. A rank that drops its handle is marked gone, so peers fail at
//! once with `MoeError::Comm` naming it; a rank that stalls makes peers fail at the deadline,
//! again naming it. Nobody hangs.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use moe_core::{Deadline, MoeError, ProcessGroup, Result, Tensor};

use crate::rows::{check_counts, check_gather_input, split_rows_by_counts, sum_tensors};

/// What one rank contributes to a round.
#[derive(Clone, Debug)]
enum Post {
    Tensor(Tensor),
    /// A tensor plus the rows it sends to each rank (all-to-all).
    Rows(Tensor, Vec<usize>),
    Value(usize),
}

#[derive(Default)]
struct Board {
    /// round -> posts by rank
    rounds: HashMap<u64, Vec<Option<Post>>>,
    /// round -> ranks that have read it (the last reader frees the round)
    reads: HashMap<u64, usize>,
    gone: Vec<bool>,
}

struct Shared {
    size: usize,
    board: Mutex<Board>,
    changed: Condvar,
}

/// One rank's handle. Dropping it marks the rank as gone for its peers.
pub struct InProcessGroup {
    rank: usize,
    shared: Arc<Shared>,
    round: Mutex<u64>,
}

impl std::fmt::Debug for InProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessGroup")
            .field("rank", &self.rank)
            .field("size", &self.shared.size)
            .finish()
    }
}

impl InProcessGroup {
    /// Handles for a world of `size` ranks; move one into each rank's thread.
    pub fn world(size: usize) -> Vec<InProcessGroup> {
        let shared = Arc::new(Shared {
            size,
            board: Mutex::new(Board {
                gone: vec![false; size],
                ..Board::default()
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| InProcessGroup {
                rank,
                shared: shared.clone(),
                round: Mutex::new(0),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic on another rank's thread poisons the lock; the board stays consistent
        // (every mutation is a single insert), so keep going and let deadlines report.
        self.shared.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts `post` for the next round and returns every rank's post, in rank order.
    fn exchange(&self, post: Post, deadline: Deadline) -> Result<Vec<Post>> {
        let round = {
            let mut r = self.round.lock().unwrap_or_else(|e| e.into_inner());
            *r += 1;
            *r
        };
        let size = self.shared.size;
        let mut board = self.lock();
        board.rounds.entry(round).or_insert_with(|| vec![None; size])[self.rank] = Some(post);
        self.shared.changed.notify_all();
        loop {
            let posts = &board.rounds[&round];
            if posts.iter().all(Option::is_some) {
                let out: Vec<Post> = posts.iter().flatten().cloned().collect();
                let reads = board.reads.entry(round).or_insert(0);
                *reads += 1;
                if *reads == size {
                    board.rounds.remove(&round);
                    board.reads.remove(&round);
                }
                return Ok(out);
            }
            let missing = posts.iter().position(Option::is_none).unwrap_or(0);
            if board.gone[missing] {
                return Err(MoeError::Comm {
                    peer: Some(missing),
                    detail: format!("rank {missing} left the group before collective round {round}"),
                });
            }
            if deadline.expired() {
                return Err(MoeError::Comm {
                    peer: Some(missing),
                    detail: format!("rank {missing} did not join collective round {round} before the deadline"),
                });
            }
            board = self
                .shared
                .changed
                .wait_timeout(board, deadline.remaining())
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn tensors(posts: Vec<Post>, what: &str) -> Result<Vec<Tensor>> {
        posts
            .into_iter()
            .map(|p| match p {
                Post::Tensor(t) => Ok(t),
                other => Err(MoeError::Comm {
                    peer: None,
                    detail: format!("{what}: ranks disagree on the collective ({other:?})"),
                }),
            })
            .collect()
    }
}

impl Drop for InProcessGroup {
    fn drop(&mut self) {
        let mut board = self.lock();
        board.gone[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

impl ProcessGroup for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn kind(&self) -> &'static str {
        "inprocess"
    }

    fn all_gather_v(&self, local: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_gather_input(local, counts, self.rank, self.size())?;
        let parts = Self::tensors(self.exchange(Post::Tensor(local.clone()), deadline)?, "all_gather_v")?;
        for (r, p) in parts.iter().enumerate() {
            if p.rows() != counts[r] {
                return Err(MoeError::Comm {
                    peer: Some(r),
                    detail: format!("sent {} rows, expected {}", p.rows(), counts[r]),
                });
            }
        }
        Tensor::concat_rows(&parts)
    }

    fn reduce_scatter_v(&self, full: &Tensor, counts: &[usize], deadline: Deadline) -> Result<Tensor> {
        check_counts(counts, self.size(), "reduce_scatter_v counts")?;
        let parts = Self::tensors(self.exchange(Post::Tensor(full.clone()), deadline)?, "reduce_scatter_v")?;
        let mine: Vec<Tensor> = parts
            .iter()
            .map(|p| split_rows_by_counts(p, counts).map(|mut v| v.swap_remove(self.rank)))
            .collect::<Result<_>>()?;
        sum_tensors(&mine.iter().collect::<Vec<_>>())
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
        let posts = self.exchange(Post::Rows(send.clone(), send_counts.to_vec()), deadline)?;
        let mut parts = Vec::with_capacity(posts.len());
        for (src, p) in posts.into_iter().enumerate() {
            let Post::Rows(t, counts) = p else {
                return Err(MoeError::Comm {
                    peer: Some(src),
                    detail: "ranks disagree on the collective".into(),
                });
            };
            let block = split_rows_by_counts(&t, &counts)?.swap_remove(self.rank);
            if block.rows() != recv_counts[src] {
                return Err(MoeError::Comm {
                    peer: Some(src),
                    detail: format!("sent {} rows, this rank expected {}", block.rows(), recv_counts[src]),
                });
            }
            parts.push(block);
        }
        Tensor::concat_rows(&parts)
    }

    fn all_reduce_sum(&self, t: &Tensor, deadline: Deadline) -> Result<Tensor> {
        let parts = Self::tensors(self.exchange(Post::Tensor(t.clone()), deadline)?, "all_reduce_sum")?;
        sum_tensors(&parts.iter().collect::<Vec<_>>())
    }

    fn all_gather_usize(&self, value: usize, deadline: Deadline) -> Result<Vec<usize>> {
        self.exchange(Post::Value(value), deadline)?
            .into_iter()
            .map(|p| match p {
                Post::Value(v) => Ok(v),
                _ => Err(MoeError::Comm {
                    peer: None,
                    detail: "ranks disagree on the collective".into(),
                }),
            })
            .collect()
    }

    fn barrier(&self, deadline: Deadline) -> Result<()> {
        self.all_gather_usize(0, deadline).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn on_world<T: Send + 'static>(n: usize, f: impl Fn(InProcessGroup) -> T + Send + Sync + 'static) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = InProcessGroup::world(n)
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(g))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn rows(r: usize, n: usize) -> Tensor {
        Tensor::from_f32(vec![n, 1], (0..n).map(|i| (10 * r + i) as f32).collect()).unwrap()
    }

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(10))
    }

    #[test]
    fn all_gather_and_reduce_scatter_with_uneven_counts() {
        let out = on_world(3, |g| {
            let counts = [2, 0, 1];
            let local = rows(g.rank(), counts[g.rank()]);
            let all = g.all_gather_v(&local, &counts, soon()).unwrap();
            let back = g.reduce_scatter_v(&all, &counts, soon()).unwrap();
            (all.to_f32_vec("a").unwrap(), back.to_f32_vec("b").unwrap())
        });
        for (r, (all, back)) in out.iter().enumerate() {
            assert_eq!(all, &[0.0, 1.0, 20.0]);
            let expected: Vec<f32> = match r {
                0 => vec![0.0, 3.0],
                1 => vec![],
                _ => vec![60.0],
            };
            assert_eq!(
                back, &expected,
                "rank {r}: every rank contributed its copy of the gathered rows"
            );
        }
    }

    #[test]
    fn all_to_all_delivers_blocks_in_rank_order() {
        let out = on_world(2, |g| {
            // rank r sends 1 row to rank 0 and r + 1 rows to rank 1
            let send_counts = [1, g.rank() + 1];
            let send = rows(g.rank(), 2 + g.rank());
            let recv_counts = if g.rank() == 0 { [1, 1] } else { [1, 2] };
            g.all_to_all_v(&send, &send_counts, &recv_counts, soon())
                .unwrap()
                .to_f32_vec("r")
                .unwrap()
        });
        assert_eq!(out[0], vec![0.0, 10.0]);
        assert_eq!(out[1], vec![1.0, 11.0, 12.0]);
    }

    #[test]
    fn a_departed_rank_is_named_without_waiting_for_the_deadline() {
        let mut world = InProcessGroup::world(2);
        let g1 = world.pop().unwrap();
        drop(world); // rank 0 leaves
        let start = std::time::Instant::now();
        let err = g1.barrier(Deadline::after(Duration::from_secs(30))).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, MoeError::Comm { peer: Some(0), .. }), "{err}");
    }

    #[test]
    fn a_stalled_rank_is_named_at_the_deadline() {
        let world = InProcessGroup::world(2);
        let err = world[1]
            .barrier(Deadline::after(Duration::from_millis(100)))
            .unwrap_err();
        assert!(matches!(err, MoeError::Comm { peer: Some(0), .. }), "{err}");
        assert!(err.to_string().contains("before the deadline"));
    }

    #[test]
    fn all_reduce_and_values() {
        let out = on_world(3, |g| {
            let t = Tensor::from_f32(vec![2], vec![g.rank() as f32, 1.0]).unwrap();
            let s = g.all_reduce_sum(&t, soon()).unwrap().to_f32_vec("s").unwrap();
            let v = g.all_gather_usize(g.rank() * 2, soon()).unwrap();
            (s, v)
        });
        for (s, v) in out {
            assert_eq!(s, vec![3.0, 3.0]);
            assert_eq!(v, vec![0, 2, 4]);
        }
    }
}
