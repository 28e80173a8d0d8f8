//! The reference backend (`"reference"`): the numerical oracle of the workspace.
//!
//! Plain loops that are easy to check by eye, in the order of the math: for each token, for
//! each of its selections whose slot is on this rank, `fc1 = W3W1[slot] · x (+ bias)`, the
//! activation, `fc2 = W2[slot] · act (+ bias)`, times the routing weight, summed per token.
//! Everything accumulates in f64 and the result is rounded once to `ctx.output_dtype`. The
//! activations are written out here again rather than shared with the kernels, so the CPU
//! backend is checked against an independent implementation. Single-threaded on purpose.
//!
//! Quantized weights are decoded one element at a time (`WeightSlice::at`). A format that
//! quantizes activations is applied as its definition: the token's input row is
//! quantize-dequantized before FC1 and the activation output (rounded to f32) before FC2, with
//! the same `qdq_rows` as the kernels, since that rounding is part of the format, not of an
//! implementation.

use moe_core::{
    Activation, Capabilities, Eligibility, ExpertPartition, MoeBackend, MoeConfig, MoeDeployment, MoeProblem,
    MoeRunContext, Result, Tensor,
};
use moe_kernels::cpu::act_quant::qdq_rows;
use moe_kernels::cpu::permute::invalid_slot_error;

use crate::capabilities::{check, host_capabilities};
use crate::inputs::{RunInputs, output_tensor};
use crate::lifecycle::{ExpertLayer, delegate_to_expert_layer};
use crate::views::LayerViews;

/// The oracle backend. See the module docs.
pub struct ReferenceBackend {
    layer: ExpertLayer,
}

impl ReferenceBackend {
    pub const NAME: &'static str = "reference";
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Activation channel `c` of an FC1 output laid out `[up ; gate]` (gated) or `[x]`.
fn activate(activation: Activation, fc1: &[f64], inter: usize, c: usize) -> f64 {
    match activation {
        Activation::Swiglu => {
            let (up, gate) = (fc1[c], fc1[inter + c]);
            silu(gate) * up
        }
        Activation::SwigluGptOss { alpha, beta, limit } => {
            let (alpha, beta, limit) = (f64::from(alpha), f64::from(beta), f64::from(limit));
            let gate = fc1[inter + c].min(limit);
            let up = fc1[c].clamp(-limit, limit);
            (up + beta) * gate * sigmoid(alpha * gate)
        }
        Activation::Relu2 => {
            let r = fc1[c].max(0.0);
            r * r
        }
    }
}

impl MoeBackend for ReferenceBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_implement(problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility {
        check(Self::NAME, &host_capabilities(), problem, deployment)
    }

    fn declared_capabilities() -> Capabilities {
        host_capabilities()
    }

    fn create(config: &MoeConfig, partition: ExpertPartition) -> Result<Self> {
        Ok(ReferenceBackend {
            layer: ExpertLayer::new(Self::NAME, &host_capabilities(), config, partition)?,
        })
    }

    fn capabilities(&self) -> Capabilities {
        host_capabilities()
    }

    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor> {
        self.layer.ensure_ready()?;
        let mut decoded = None;
        let inp = RunInputs::parse(ctx, &self.layer, &mut decoded)?;
        let views = LayerViews::new(&self.layer);
        let (n, k) = (inp.num_tokens, inp.top_k);
        let h = views.dims.hidden;
        let inter = views.dims.inter;
        let fc1_rows = views.dims.fc1_rows();
        let p = &self.layer.partition;

        let mut out = vec![0.0f32; n * h];
        let mut acc = vec![0.0f64; h];
        let mut fc1 = vec![0.0f64; fc1_rows];
        let mut act = vec![0.0f64; inter];
        let mut xq = vec![0.0f32; h];
        let mut act_q = vec![0.0f32; inter];
        for t in 0..n {
            acc.fill(0.0);
            for j in 0..k {
                let id = inp.slots[t * k + j];
                if id < 0 || id as usize >= p.num_slots {
                    return Err(invalid_slot_error(t, j, id, p.num_slots));
                }
                let Some(slot) = p.local_slot(id) else {
                    continue; // another EP rank computes this selection
                };
                let w = views.slot(slot)?;
                let weight = inp.scales.map_or(1.0, |s| f64::from(s[t * k + j]));

                for (c, v) in xq.iter_mut().enumerate() {
                    *v = inp.x.at(t * h + c);
                }
                qdq_rows(&w.fc1_input, &mut xq, h)?;
                for (r, f) in fc1.iter_mut().enumerate() {
                    let mut sum = 0.0f64;
                    for c in 0..h {
                        sum += f64::from(w.w3_w1.at(r * h + c)) * f64::from(xq[c]);
                    }
                    if let Some(b) = w.w3_w1_bias {
                        sum += f64::from(b.at(r));
                    }
                    *f = sum;
                }
                for (c, a) in act.iter_mut().enumerate() {
                    *a = activate(views.dims.activation, &fc1, inter, c);
                }
                if !w.fc2_input.is_none() {
                    // The format quantizes f32 activations; the f64 ones are rounded first.
                    for (q, &a) in act_q.iter_mut().zip(&act) {
                        *q = a as f32;
                    }
                    qdq_rows(&w.fc2_input, &mut act_q, inter)?;
                    for (a, &q) in act.iter_mut().zip(&act_q) {
                        *a = f64::from(q);
                    }
                }
                for (o, acc_o) in acc.iter_mut().enumerate() {
                    let mut sum = 0.0f64;
                    for (c, a) in act.iter().enumerate() {
                        sum += f64::from(w.w2.at(o * inter + c)) * a;
                    }
                    if let Some(b) = w.w2_bias {
                        sum += f64::from(b.at(o));
                    }
                    *acc_o += weight * sum;
                }
            }
            for (dst, &v) in out[t * h..(t + 1) * h].iter_mut().zip(&acc) {
                *dst = v as f32;
            }
        }
        output_tensor(inp.output_dtype, n, h, out)
    }

    delegate_to_expert_layer!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{DType, MemoryWeights, RoutingMethod};

    /// H = 2, I = 1, two experts, SwiGLU, no bias. With a = ln 3, sigmoid(a) = 3/4 and
    /// sigmoid(-a) = 1/4, so silu(a) = 3a/4 and silu(-a) = -a/4.
    ///
    /// Expert 0: gate row w1 = [1, 0], up row w3 = [0, 1], down w2 = [[1], [2]].
    /// Expert 1: gate row w1 = [-1, 0], up row w3 = [0, 2], down w2 = [[4], [0]].
    ///
    /// With x = [a, 2]:
    /// - expert 0: gate = a, up = 2, act = 2 * 3a/4 = 3a/2, y0 = [3a/2, 3a].
    /// - expert 1: gate = -a, up = 4, act = 4 * (-a/4) = -a, y1 = [-4a, 0].
    ///
    /// Token 0 picks (0, w 0.5) and (1, w 0.25): 0.5 y0 + 0.25 y1 = [3a/4 - a, 3a/2] = [-a/4, 3a/2].
    /// Token 1 picks (1, w 1.0) and (0, w 0.0): y1 = [-4a, 0].
    fn hand_layer(ep_size: usize, ep_rank: usize) -> (ReferenceBackend, MemoryWeights) {
        let mut c = MoeConfig::new(2, 2, 1, DType::F32, RoutingMethod::Renormalize { top_k: 2 });
        c.parallel.ep_size = ep_size;
        c.parallel.ep_rank = ep_rank;
        let mut w = MemoryWeights::new();
        let t = |shape: Vec<usize>, v: Vec<f32>| Tensor::from_f32(shape, v).unwrap();
        w.insert("0.w1.weight", t(vec![1, 2], vec![1., 0.]));
        w.insert("0.w3.weight", t(vec![1, 2], vec![0., 1.]));
        w.insert("0.w2.weight", t(vec![2, 1], vec![1., 2.]));
        w.insert("1.w1.weight", t(vec![1, 2], vec![-1., 0.]));
        w.insert("1.w3.weight", t(vec![1, 2], vec![0., 2.]));
        w.insert("1.w2.weight", t(vec![2, 1], vec![4., 0.]));
        let b = ReferenceBackend::create(&c, ExpertPartition::compute(&c, true).unwrap()).unwrap();
        (b, w)
    }

    fn run(b: &ReferenceBackend) -> Vec<f32> {
        let a = 3.0f32.ln();
        let x = Tensor::from_f32(vec![2, 2], vec![a, 2., a, 2.]).unwrap();
        let ids = Tensor::from_i32(vec![2, 2], vec![0, 1, 1, 0]).unwrap();
        let w = Tensor::from_f32(vec![2, 2], vec![0.5, 0.25, 1.0, 0.0]).unwrap();
        let ctx = MoeRunContext {
            x: &x,
            x_sf: None,
            token_selected_slots: &ids,
            token_final_scales: Some(&w),
            output_dtype: DType::F32,
            all_rank_num_tokens: None,
            comm_plan: None,
        };
        b.run_moe(&ctx).unwrap().as_f32("out").unwrap().to_vec()
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn hand_computed_swiglu_layer() {
        let (mut b, w) = hand_layer(1, 0);
        b.create_weights().unwrap();
        b.load_weights(&w, false).unwrap();
        let a = 3.0f64.ln();
        assert_close(&run(&b), &[-a / 4.0, 1.5 * a, -4.0 * a, 0.0]);
    }

    #[test]
    fn hand_computed_layer_on_ep_rank_1_keeps_only_expert_1() {
        // Rank 1 of 2 holds expert 1 only: token 0 -> 0.25 y1 = [-a, 0], token 1 -> y1.
        let (mut b, w) = hand_layer(2, 1);
        b.create_weights().unwrap();
        b.load_weights(&w, false).unwrap();
        let a = 3.0f64.ln();
        assert_close(&run(&b), &[-a, 0.0, -4.0 * a, 0.0]);
    }
}
