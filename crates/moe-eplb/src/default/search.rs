//! The local search of the default planner: take the most loaded GPU and apply the best of
//! two moves while its load strictly drops (see the parent module's docs for the moves).
//!
//! Each step picks exactly the move a direct scan would pick: the direct scan (kept in the
//! tests as the oracle) tries every swap of a slot of the top GPU with every other slot, and
//! every reassignment of every slot to every expert of the top GPU, rebuilding the GPU loads
//! for each candidate, which took 22 s at 10^4 slots and minutes at 3·10^4. Here a step costs
//! about `experts × slots` instead of `slots² × GPUs`:
//! - swaps: candidates that differ only in which of several equal slots they use (same GPU,
//!   same expert, same previous expert) have equal values, and the scan keeps the first, so
//!   one representative slot per class is tried;
//! - reassignments: the new loads of the GPUs holding the removed expert `a` do not depend
//!   on the added expert `b` except where both sit, so they are computed once per `a`, and the
//!   largest of them apart from the slot's own GPU comes from a top-two; every load is summed
//!   in the direct scan's order, so values match it bit for bit.
//!
//! Candidates are ranked by the scan's key, and equal keys by the scan's order (phase, then
//! slot or expert, then slot), so the chosen move is the one the scan would have kept.

use std::collections::HashSet;

use crate::plan::counts_of;

/// Upper bound on local-search steps; each step strictly improves, so this only guards
/// against pathological floating-point plateaus.
const MAX_STEPS: usize = 20_000;

/// Slots whose expert differs between two tables of equal length.
pub(super) fn changed(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// A slot table with its replica counts and GPU loads, for local search.
pub(super) struct Layout<'a> {
    load: &'a [f64],
    spg: usize,
    pub slots: Vec<usize>,
    cnt: Vec<usize>,
    pub gpu: Vec<f64>,
}

/// A local-search move.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Move {
    /// Exchange the experts of two slots on different GPUs.
    Swap(usize, usize),
    /// Point a slot (whose expert keeps at least one other replica) at another expert.
    Reassign { slot: usize, expert: usize },
}

/// The best candidate so far: its move, the scan's key and the scan's order.
struct Best {
    m: Move,
    key: (bool, f64),
    order: (u8, usize, usize),
}

/// What every candidate of one step is judged against.
struct Judge<'b> {
    lmax: f64,
    eps: f64,
    now_changed: usize,
    budget: Option<(&'b [usize], usize)>,
    best: Option<Best>,
}

impl Judge<'_> {
    /// Change in "slots differing from previous" if slot `s` held `x`.
    fn diff(&self, s: usize, x: usize) -> i64 {
        self.budget.map_or(0, |(p, _)| i64::from(p[s] != x))
    }

    /// Keeps `m` if it lowers the top GPU below `lmax`, stays within the budget, and ranks
    /// above the best so far (equal keys: the earlier in the direct scan's order).
    fn offer(&mut self, m: Move, val: f64, dchg: i64, order: (u8, usize, usize)) {
        if val >= self.lmax - self.eps {
            return;
        }
        if let Some((_, limit)) = self.budget {
            // The count after the move is never negative; compare as usize so an unlimited
            // budget (`usize::MAX`) stays unlimited.
            let after = usize::try_from(self.now_changed as i64 + dchg).unwrap_or(0);
            if after > limit {
                return;
            }
        }
        let gain = self.lmax - val;
        let key = if self.budget.is_some() {
            (dchg <= 0, if dchg <= 0 { gain } else { gain / dchg as f64 })
        } else {
            (true, gain)
        };
        let better = self.best.as_ref().is_none_or(|b| {
            (key.0 && !b.key.0) || (key.0 == b.key.0 && (key.1 > b.key.1 || (key.1 == b.key.1 && order < b.order)))
        });
        if better {
            self.best = Some(Best { m, key, order });
        }
    }
}

/// `base` plus `delta` added `times` times, one addition at a time (the direct scan's sums).
fn add_n(base: f64, delta: f64, times: usize) -> f64 {
    (0..times).fold(base, |v, _| v + delta)
}

impl<'a> Layout<'a> {
    pub fn new(load: &'a [f64], slots: Vec<usize>, num_gpus: usize, spg: usize) -> Self {
        let mut lay = Layout {
            load,
            spg,
            cnt: Vec::new(),
            gpu: vec![0.0; num_gpus],
            slots,
        };
        lay.refresh();
        lay
    }

    /// Recomputes counts and loads from scratch (after every move, so no rounding drifts).
    fn refresh(&mut self) {
        self.cnt = counts_of(&self.slots, self.load.len());
        self.gpu.iter_mut().for_each(|g| *g = 0.0);
        for (s, &x) in self.slots.iter().enumerate() {
            self.gpu[s / self.spg] += self.load[x] / self.cnt[x] as f64;
        }
    }

    fn share(&self, x: usize) -> f64 {
        self.load[x] / self.cnt[x] as f64
    }

    /// Local search; with `budget = (previous, limit)` no move may take the number of slots
    /// differing from `previous` past `limit`, and moves are ranked by load drop per slot
    /// they newly change (moves that change nothing new come first).
    pub fn improve(&mut self, budget: Option<(&[usize], usize)>) {
        for _ in 0..MAX_STEPS {
            match self.best_move(budget) {
                None => return,
                Some(Move::Swap(s, t)) => self.slots.swap(s, t),
                Some(Move::Reassign { slot, expert }) => self.slots[slot] = expert,
            }
            self.refresh();
        }
    }

    /// The move the direct scan would make from this layout, `None` when none improves.
    fn best_move(&self, budget: Option<(&[usize], usize)>) -> Option<Move> {
        // The most loaded GPU, the first of equals.
        let top = (0..self.gpu.len()).max_by(|&a, &b| {
            self.gpu[a]
                .partial_cmp(&self.gpu[b])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.cmp(&a))
        })?;
        let lmax = self.gpu[top];
        if lmax <= 0.0 {
            return None;
        }
        let mut judge = Judge {
            lmax,
            eps: lmax * 1e-12,
            now_changed: budget.map_or(0, |(p, _)| changed(&self.slots, p)),
            budget,
            best: None,
        };
        self.offer_swaps(top, &mut judge);
        self.offer_reassignments(top, &mut judge);
        judge.best.map(|b| b.m)
    }

    /// The first slot of each class of interchangeable slots in `range` (same expert, same
    /// previous expert under a budget), ascending.
    fn representatives(&self, range: std::ops::Range<usize>, budget: Option<(&[usize], usize)>) -> Vec<usize> {
        let mut seen = HashSet::new();
        range
            .filter(|&s| seen.insert((self.slots[s], budget.map(|(p, _)| p[s]))))
            .collect()
    }

    fn offer_swaps(&self, top: usize, judge: &mut Judge<'_>) {
        let spg = self.spg;
        let lmax = judge.lmax;
        let top_slots = self.representatives(top * spg..(top + 1) * spg, judge.budget);
        let others: Vec<usize> = (0..self.gpu.len())
            .filter(|&h| h != top)
            .flat_map(|h| self.representatives(h * spg..(h + 1) * spg, judge.budget))
            .collect();
        for &s in &top_slots {
            let xs = self.slots[s];
            let ws = self.share(xs);
            for &t in &others {
                let xt = self.slots[t];
                let wt = self.share(xt);
                if xt == xs || wt >= ws {
                    continue;
                }
                let h = t / spg;
                let val = (lmax - ws + wt).max(self.gpu[h] - wt + ws);
                let dchg = judge.diff(s, xt) + judge.diff(t, xs) - judge.diff(s, xs) - judge.diff(t, xt);
                judge.offer(Move::Swap(s, t), val, dchg, (0, s, t));
            }
        }
    }

    fn offer_reassignments(&self, top: usize, judge: &mut Judge<'_>) {
        let spg = self.spg;
        let g = self.gpu.len();
        let mut on_top: Vec<usize> = self.slots[top * spg..(top + 1) * spg].to_vec();
        on_top.sort_unstable();
        on_top.dedup();
        let mut reps: Vec<Vec<usize>> = vec![Vec::new(); self.load.len()];
        for (s, &x) in self.slots.iter().enumerate() {
            reps[x].push(s);
        }
        // Per expert `a` that can give up a replica: the GPUs holding it with their loads after
        // it loses one replica elsewhere (`(gpu, load)`, one entry per GPU, in slot order), and
        // for each of its slots `t` the load of t's GPU when t itself is the one it loses.
        let mut a_gpus: Vec<Vec<(usize, f64)>> = vec![Vec::new(); self.load.len()];
        let mut a_own: Vec<Vec<f64>> = vec![Vec::new(); self.load.len()];
        for (a, slots_a) in reps.iter().enumerate() {
            if self.cnt[a] < 2 {
                continue;
            }
            let (old, new) = (self.share(a), self.load[a] / (self.cnt[a] - 1) as f64);
            for run in slots_a.chunk_by(|&x, &y| x / spg == y / spg) {
                let h = run[0] / spg;
                a_gpus[a].push((h, add_n(self.gpu[h], new - old, run.len())));
                for &t in run {
                    let own = run
                        .iter()
                        .fold(self.gpu[h], |v, &r| v + if r == t { -old } else { new - old });
                    a_own[a].push(own);
                }
            }
        }
        let mut kb = vec![0usize; g];
        let mut holds_a = vec![false; g];
        for &b in &on_top {
            let (sb_old, sb_new) = (self.share(b), self.load[b] / (self.cnt[b] + 1) as f64);
            let db = sb_new - sb_old;
            for &r in &reps[b] {
                kb[r / spg] += 1;
            }
            let mut b_gpus: Vec<usize> = reps[b].iter().map(|&r| r / spg).collect();
            b_gpus.dedup();
            for a in (0..self.load.len()).filter(|&a| a != b && self.cnt[a] >= 2) {
                // Loads of a's GPUs with b's shares updated where b also sits; the two largest.
                let mut first = (f64::NEG_INFINITY, usize::MAX);
                let mut second = f64::NEG_INFINITY;
                for &(h, v) in &a_gpus[a] {
                    holds_a[h] = true;
                    let v = add_n(v, db, kb[h]);
                    if v > first.0 {
                        second = first.0;
                        first = (v, h);
                    } else if v > second {
                        second = v;
                    }
                }
                // GPUs of b that do not hold a.
                let b_only = b_gpus
                    .iter()
                    .filter(|&&h| !holds_a[h])
                    .map(|&h| add_n(self.gpu[h], db, kb[h]))
                    .fold(f64::NEG_INFINITY, f64::max);
                for &(h, _) in &a_gpus[a] {
                    holds_a[h] = false;
                }
                for (&t, &own) in reps[a].iter().zip(&a_own[a]) {
                    let h = t / spg;
                    let mine = add_n(own, db, kb[h]) + sb_new;
                    let others = if first.1 == h { second } else { first.0 };
                    let val = mine.max(others).max(b_only);
                    judge.offer(
                        Move::Reassign { slot: t, expert: b },
                        val,
                        judge.diff(t, b) - judge.diff(t, a),
                        (1, b, t),
                    );
                }
            }
            for &r in &reps[b] {
                kb[r / spg] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests;
