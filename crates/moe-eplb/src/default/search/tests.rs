//! The fast search against the direct scan it replaced: the same moves, so the same tables,
//! on random layers with and without a previous placement and a cap.

use super::*;
use moe_core::prng::SplitMix64 as Rng;

/// The direct scan this module replaced, move for move as it was: the oracle.
struct Direct<'a> {
    load: &'a [f64],
    spg: usize,
    slots: Vec<usize>,
    cnt: Vec<usize>,
    gpu: Vec<f64>,
}

impl<'a> Direct<'a> {
    fn new(load: &'a [f64], slots: Vec<usize>, num_gpus: usize, spg: usize) -> Self {
        let mut lay = Direct {
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
    fn improve(&mut self, budget: Option<(&[usize], usize)>) {
        let n = self.slots.len();
        let spg = self.spg;
        for _ in 0..MAX_STEPS {
            let Some(top) = (0..self.gpu.len()).max_by(|&a, &b| {
                self.gpu[a]
                    .partial_cmp(&self.gpu[b])
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(b.cmp(&a))
            }) else {
                return;
            };
            let lmax = self.gpu[top];
            if lmax <= 0.0 {
                return;
            }
            let eps = lmax * 1e-12;
            let now_changed = budget.map_or(0, |(p, _)| changed(&self.slots, p));
            // Change in "slots differing from previous" if slot `s` held `x`.
            let diff = |s: usize, x: usize| budget.map_or(0i64, |(p, _)| i64::from(p[s] != x));
            let mut best: Option<(Move, (bool, f64))> = None;
            let mut consider = |m: Move, val: f64, dchg: i64| {
                if val >= lmax - eps {
                    return;
                }
                if let Some((_, limit)) = budget {
                    // The count after the move is never negative; compare as usize so an
                    // unlimited budget (`usize::MAX`) stays unlimited.
                    let after = usize::try_from(now_changed as i64 + dchg).unwrap_or(0);
                    if after > limit {
                        return;
                    }
                }
                let gain = lmax - val;
                let key = if budget.is_some() {
                    (dchg <= 0, if dchg <= 0 { gain } else { gain / dchg as f64 })
                } else {
                    (true, gain)
                };
                if best
                    .as_ref()
                    .is_none_or(|(_, k)| (key.0 && !k.0) || (key.0 == k.0 && key.1 > k.1))
                {
                    best = Some((m, key));
                }
            };

            let top_slots = top * spg..(top + 1) * spg;
            for s in top_slots.clone() {
                let xs = self.slots[s];
                let ws = self.share(xs);
                for t in (0..n).filter(|t| !top_slots.contains(t)) {
                    let xt = self.slots[t];
                    let wt = self.share(xt);
                    if xt == xs || wt >= ws {
                        continue;
                    }
                    let h = t / spg;
                    let val = (lmax - ws + wt).max(self.gpu[h] - wt + ws);
                    let dchg = diff(s, xt) + diff(t, xs) - diff(s, xs) - diff(t, xt);
                    consider(Move::Swap(s, t), val, dchg);
                }
            }

            let mut on_top: Vec<usize> = self.slots[top_slots].to_vec();
            on_top.sort_unstable();
            on_top.dedup();
            let mut reps: Vec<Vec<usize>> = vec![Vec::new(); self.load.len()];
            for (s, &x) in self.slots.iter().enumerate() {
                reps[x].push(s);
            }
            let mut new_gpu = self.gpu.clone();
            for &b in &on_top {
                let (sb_old, sb_new) = (self.share(b), self.load[b] / (self.cnt[b] + 1) as f64);
                for t in 0..n {
                    let a = self.slots[t];
                    if a == b || self.cnt[a] < 2 {
                        continue;
                    }
                    let (sa_old, sa_new) = (self.share(a), self.load[a] / (self.cnt[a] - 1) as f64);
                    new_gpu.copy_from_slice(&self.gpu);
                    for &r in &reps[a] {
                        new_gpu[r / spg] += if r == t { -sa_old } else { sa_new - sa_old };
                    }
                    for &r in &reps[b] {
                        new_gpu[r / spg] += sb_new - sb_old;
                    }
                    new_gpu[t / spg] += sb_new;
                    // Only GPUs holding a or b (or t) changed; the others stay below lmax.
                    let val = reps[a]
                        .iter()
                        .chain(&reps[b])
                        .map(|&r| new_gpu[r / spg])
                        .fold(new_gpu[t / spg], f64::max);
                    consider(Move::Reassign { slot: t, expert: b }, val, diff(t, b) - diff(t, a));
                }
            }

            match best {
                None => return,
                Some((Move::Swap(s, t), _)) => self.slots.swap(s, t),
                Some((Move::Reassign { slot, expert }, _)) => self.slots[slot] = expert,
            }
            self.refresh();
        }
    }
}

/// A random layer: loads (skewed, with zeros and exact ties) and a valid start table.
fn random_case(rng: &mut Rng) -> (Vec<f64>, Vec<usize>, usize, usize) {
    let e = 1 + rng.modulo(24);
    let g = 1 + rng.modulo(6);
    let spg = e.div_ceil(g) + rng.modulo(4);
    let load: Vec<f64> = (0..e)
        .map(|_| match rng.modulo(5) {
            0 => 0.0,
            1 => 8.0,
            _ => (rng.modulo(1000) as f64).powf(1.5) / 7.0,
        })
        .collect();
    let mut slots: Vec<usize> = (0..e).collect();
    slots.extend((e..g * spg).map(|_| rng.modulo(e)));
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.modulo(i + 1));
    }
    (load, slots, g, spg)
}

#[test]
fn the_fast_search_makes_the_direct_scans_moves() {
    let mut rng = Rng::new(18);
    let mut moved = 0;
    for case in 0..1000 {
        let (load, start, g, spg) = random_case(&mut rng);
        // A previous placement: the start table with a few slots shuffled.
        let mut prev = start.clone();
        for _ in 0..rng.modulo(4) {
            let (i, j) = (rng.modulo(prev.len()), rng.modulo(prev.len()));
            prev.swap(i, j);
        }
        let budgets: [Option<(&[usize], usize)>; 3] = [None, Some((&prev, usize::MAX)), Some((&prev, rng.modulo(6)))];
        for budget in budgets {
            let mut fast = Layout::new(&load, start.clone(), g, spg);
            let mut direct = Direct::new(&load, start.clone(), g, spg);
            fast.improve(budget);
            direct.improve(budget);
            assert_eq!(
                fast.slots, direct.slots,
                "case {case}: load {load:?} start {start:?} g {g} spg {spg}"
            );
            moved += usize::from(fast.slots != start);
        }
    }
    assert!(moved > 1000, "the cases exercise the search: {moved} of 3000 moved");
}

#[test]
fn ten_thousand_slots_plan_in_well_under_a_second_a_step() {
    // 256 experts, 10^4 slots on 8 GPUs: the direct scan took 86 s here (release build).
    let mut rng = Rng::new(7);
    let load: Vec<f64> = (0..256).map(|_| 1.0 + (rng.modulo(10_000) as f64).powi(2)).collect();
    let start: Vec<usize> = (0..10_000).map(|s| s % 256).collect();
    let t = std::time::Instant::now();
    let mut lay = Layout::new(&load, start, 8, 1250);
    lay.improve(None);
    assert!(t.elapsed().as_secs_f64() < 60.0, "{:?}", t.elapsed());
}
