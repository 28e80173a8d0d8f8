//! Shared fixtures: a deterministic PRNG, random checkpoints and routings, backend setup and
//! the relative-L2 comparison.

use moe_core::weights::{Proj, expert_tensor_name};
use moe_core::{DType, ExpertPartition, MemoryWeights, MoeBackend, MoeConfig, MoeRunContext, RoutingMethod, Tensor};

/// The workspace's seeded generator (`moe_core::prng`), under the name these tests use.
pub use moe_core::prng::SplitMix64 as Rng;

pub fn config(e: usize, h: usize, i: usize, k: usize, dtype: DType) -> MoeConfig {
    MoeConfig::new(e, h, i, dtype, RoutingMethod::Renormalize { top_k: k })
}

/// A random checkpoint for `c` (unsharded, all experts) in the config dtype. Weights are
/// scaled by 1/sqrt(fan-in) so activations stay O(1).
pub fn checkpoint(c: &MoeConfig, seed: u64) -> MemoryWeights {
    let mut rng = Rng::new(seed);
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (sh, si) = (2.0 / (h as f32).sqrt(), 2.0 / (i as f32).sqrt());
    let mut w = MemoryWeights::new();
    let mut put = |name: String, shape: Vec<usize>, v: Vec<f32>| {
        w.insert(name, Tensor::from_f32_as(c.dtype, shape, &v).unwrap());
    };
    for e in 0..c.num_experts {
        let mut projs = vec![(Proj::W1, vec![i, h], sh), (Proj::W2, vec![h, i], si)];
        if c.activation.is_gated() {
            projs.push((Proj::W3, vec![i, h], sh));
        }
        for (p, shape, scale) in projs {
            let len = shape.iter().product();
            put(expert_tensor_name(e, p, "weight"), shape.clone(), rng.fill(len, scale));
            if c.bias {
                let blen = shape[0];
                put(expert_tensor_name(e, p, "bias"), vec![blen], rng.fill(blen, 0.5));
            }
        }
    }
    w
}

/// Routing of `n` tokens: `k` distinct experts per token, positive weights.
pub fn routing(n: usize, k: usize, num_experts: usize, seed: u64) -> (Vec<i32>, Vec<f32>) {
    let mut rng = Rng::new(seed ^ 0xABCD);
    let mut ids = Vec::with_capacity(n * k);
    let mut pool: Vec<usize> = (0..num_experts).collect();
    for _ in 0..n {
        // Partial Fisher-Yates: the first k entries become a random k-subset.
        for j in 0..k {
            let r = j + rng.modulo(num_experts - j);
            pool.swap(j, r);
            ids.push(pool[j] as i32);
        }
    }
    let weights = (0..n * k).map(|_| 0.05 + 0.5 * (rng.next_sym() + 1.0)).collect();
    (ids, weights)
}

/// A backend of type `B` for `c`, created and fully loaded from `src`.
pub fn loaded<B: MoeBackend>(c: &MoeConfig, src: &MemoryWeights) -> B {
    let p = ExpertPartition::compute(c, true).unwrap();
    let mut b = B::create(c, p).unwrap();
    b.create_weights().unwrap();
    b.load_weights(src, false).unwrap();
    b.post_load_weights().unwrap();
    b
}

/// Activations `[n, h]` in `dtype`.
pub fn activations(n: usize, h: usize, dtype: DType, seed: u64) -> Tensor {
    Tensor::from_f32_as(dtype, vec![n, h], &Rng::new(seed ^ 0x5EED).fill(n * h, 1.0)).unwrap()
}

/// Runs `b` with slot ids `ids` and weights `w` (`None` = all ones), returning f64 values.
pub fn run(b: &dyn MoeBackend, x: &Tensor, ids: &[i32], w: Option<&[f32]>, out: DType) -> Vec<f64> {
    run_payload(b, x, None, ids, w, out)
}

/// [`run`] of a `quantize_input` result: activations `x` (values or E4M3 codes) and their
/// scales `x_sf`.
pub fn run_payload(
    b: &dyn MoeBackend,
    x: &Tensor,
    x_sf: Option<&Tensor>,
    ids: &[i32],
    w: Option<&[f32]>,
    out: DType,
) -> Vec<f64> {
    let n = x.rows();
    let k = ids.len() / n.max(1);
    let ids = Tensor::from_i32(vec![n, k], ids.to_vec()).unwrap();
    let w = w.map(|w| Tensor::from_f32(vec![n, k], w.to_vec()).unwrap());
    let ctx = MoeRunContext {
        x,
        x_sf,
        token_selected_slots: &ids,
        token_final_scales: w.as_ref(),
        output_dtype: out,
        all_rank_num_tokens: None,
        comm_plan: None,
    };
    let y = b.run_moe(&ctx).unwrap();
    assert_eq!(y.shape(), &[n, x.shape()[1]]);
    assert_eq!(y.dtype(), out);
    y.to_f32_vec("y").unwrap().into_iter().map(f64::from).collect()
}

/// `||got - want|| / ||want||` (0 when both are zero).
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

pub fn add_into(acc: &mut [f64], part: &[f64]) {
    for (a, p) in acc.iter_mut().zip(part) {
        *a += p;
    }
}
