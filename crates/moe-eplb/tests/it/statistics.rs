//! Statistics across ranks: the all-reduce through the layer's process group, the
//! `ignore_allreduce` path fed by gathered counts, and the decay worked by hand.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moe_core::{Deadline, MoeError, ProcessGroup, Result, Tensor};
use moe_eplb::ExpertStatistics;

/// A process group of `size` ranks whose other ranks always contribute `others` to an
/// all-reduce; it records the tensors it was given.
pub struct FakeGroup {
    pub size: usize,
    pub others: Vec<f32>,
    pub seen: Mutex<Vec<Vec<f32>>>,
}

impl FakeGroup {
    pub fn new(size: usize, others: Vec<f32>) -> Arc<FakeGroup> {
        Arc::new(FakeGroup {
            size,
            others,
            seen: Mutex::new(Vec::new()),
        })
    }
}

fn unused() -> MoeError {
    MoeError::Comm {
        peer: None,
        detail: "not used by the balancer".into(),
    }
}

impl ProcessGroup for FakeGroup {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        self.size
    }
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn all_gather_v(&self, _: &Tensor, _: &[usize], _: Deadline) -> Result<Tensor> {
        Err(unused())
    }
    fn reduce_scatter_v(&self, _: &Tensor, _: &[usize], _: Deadline) -> Result<Tensor> {
        Err(unused())
    }
    fn all_to_all_v(&self, _: &Tensor, _: &[usize], _: &[usize], _: Deadline) -> Result<Tensor> {
        Err(unused())
    }
    fn all_reduce_sum(&self, t: &Tensor, _: Deadline) -> Result<Tensor> {
        let v = t.to_f32_vec("all-reduce input")?;
        self.seen.lock().map_err(|_| unused())?.push(v.clone());
        let sum: Vec<f32> = v.iter().zip(&self.others).map(|(a, b)| a + b).collect();
        Tensor::from_f32(t.shape().to_vec(), sum)
    }
    fn all_gather_usize(&self, _: usize, _: Deadline) -> Result<Vec<usize>> {
        Err(unused())
    }
    fn barrier(&self, _: Deadline) -> Result<()> {
        Ok(())
    }
}

#[test]
fn counts_are_all_reduced_then_decayed() {
    let group = FakeGroup::new(2, vec![1.0, 0.0, 4.0]);
    let mut s = ExpertStatistics::new(3, 0.9, Some(group.clone()), Duration::from_secs(1)).unwrap();
    // Iteration 1: local [2, 1, 0] + others [1, 0, 4] = [3, 1, 4].
    s.count(&[0, 1, 0], true);
    s.finish(false).unwrap();
    assert_eq!(s.load_factor(), &[3.0, 1.0, 4.0]);
    // Iteration 2 over two chunks: local [0, 2, 1] -> global [1, 2, 5];
    // load = 0.9 * [3, 1, 4] + [1, 2, 5] = [3.7, 2.9, 8.6].
    s.count(&[1, 2], true);
    s.count(&[1], false);
    s.finish(false).unwrap();
    let expect = [3.7, 2.9, 8.6];
    for (a, b) in s.load_factor().iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{:?} vs {expect:?}", s.load_factor());
    }
    assert_eq!(
        *group.seen.lock().unwrap(),
        vec![vec![2.0, 1.0, 0.0], vec![0.0, 2.0, 1.0]]
    );
}

#[test]
fn ignore_allreduce_waits_for_the_gathered_counts() {
    let group = FakeGroup::new(2, vec![100.0; 2]);
    let mut s = ExpertStatistics::new(2, 0.5, Some(group.clone()), Duration::from_secs(1)).unwrap();
    s.count(&[0, 0, 1], true);
    s.finish(true).unwrap();
    assert!(s.awaiting_gathered());
    assert_eq!(s.load_factor(), &[0.0, 0.0]);
    // Rank 0 counted [2, 1], rank 1 [3, 0]: the strategy hands both back.
    s.apply_gathered(&Tensor::from_f32(vec![2, 2], vec![2.0, 1.0, 3.0, 0.0]).unwrap())
        .unwrap();
    assert_eq!(s.load_factor(), &[5.0, 1.0]);
    assert!(!s.awaiting_gathered());
    assert!(
        group.seen.lock().unwrap().is_empty(),
        "no all-reduce on the ignore_allreduce path"
    );
    let wrong = Tensor::from_f32(vec![2, 3], vec![0.0; 6]).unwrap();
    assert!(s.apply_gathered(&wrong).unwrap_err().to_string().contains("[ep, 2]"));
}

#[test]
fn a_world_of_one_applies_local_counts_even_when_told_to_skip_the_allreduce() {
    let mut s = ExpertStatistics::new(2, 0.9, None, Duration::from_secs(1)).unwrap();
    s.count(&[1, 1, 1], true);
    s.finish(true).unwrap();
    assert_eq!(s.load_factor(), &[0.0, 3.0]);
}
