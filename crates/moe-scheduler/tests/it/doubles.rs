//! Test doubles: a backend whose output is easy to predict, a balancer and a communication
//! strategy that record the calls they receive.

use std::sync::{Arc, Mutex};

use moe_core::quant::LayerLayout;
use moe_core::*;

/// Output row `t` = `x[t] * sum_j w[t, j] * (slot[t, j] + 1)`: chunking, routing and slot
/// mapping all show in the numbers, and the math is trivially checkable.
pub struct ScaleBackend {
    pub layout: LayerLayout,
    pub weights: ExpertWeights,
    pub calls: Arc<Mutex<Vec<usize>>>,
}

impl ScaleBackend {
    pub fn new(config: &MoeConfig) -> Self {
        let p = ExpertPartition::compute(config, true).unwrap();
        ScaleBackend {
            layout: LayerLayout::new(config, &p),
            weights: ExpertWeights::default(),
            calls: Arc::default(),
        }
    }
}

/// Quant method of the double: nothing to load.
pub struct NoQuant;

impl QuantMethod for NoQuant {
    fn name(&self) -> &'static str {
        "none"
    }
    fn algo(&self) -> QuantAlgo {
        QuantAlgo::None
    }
    fn create_weights(&self, _: &LayerLayout) -> Result<ExpertWeights> {
        Ok(ExpertWeights::default())
    }
    fn load_weights(&self, _: &mut ExpertWeights, _: &LayerLayout, _: &dyn WeightSource, _: bool) -> Result<()> {
        Ok(())
    }
    fn process_weights_after_loading(&self, _: &mut ExpertWeights, _: &LayerLayout) -> Result<()> {
        Ok(())
    }
    fn transform_weights(&self, _: &mut ExpertWeights, _: &LayerLayout) -> Result<()> {
        Ok(())
    }
    fn setup_quant_scales(&self, _: &mut ExpertWeights, _: &LayerLayout) -> Result<()> {
        Ok(())
    }
    fn quantize_input<'a>(&self, x: &'a Tensor, _: &ExpertWeights) -> Result<QuantizedInput<'a>> {
        Ok(QuantizedInput::borrowed(x))
    }
    fn eplb_support_status(&self) -> EplbSupportStatus {
        EplbSupportStatus::Supported
    }
    fn need_load_shared_weights(&self) -> bool {
        false
    }
    fn expert_tensors(&self, _: &LayerLayout) -> Vec<ExpertTensorRegistration> {
        Vec::new()
    }
}

impl MoeBackend for ScaleBackend {
    fn name(&self) -> &'static str {
        "scale-double"
    }
    fn can_implement(_: &MoeProblem, _: &MoeDeployment) -> Eligibility {
        Eligibility::ok()
    }
    fn declared_capabilities() -> Capabilities {
        Capabilities {
            device: "cpu".into(),
            quant: vec![QuantAlgo::None],
            dtypes: vec![DType::F32],
            activations: vec!["swiglu".into()],
            supports_bias: false,
            supports_apply_router_weight_on_input: true,
            supports_eplb: true,
            supports_non_divisible_ep: true,
            supports_tp: false,
        }
    }
    fn create(config: &MoeConfig, _: ExpertPartition) -> Result<Self> {
        Ok(ScaleBackend::new(config))
    }
    fn capabilities(&self) -> Capabilities {
        Self::declared_capabilities()
    }
    fn supports_load_balancer(&self) -> bool {
        true
    }
    fn quantize_input<'a>(&'a self, x: &'a Tensor) -> Result<QuantizedInput<'a>> {
        Ok(QuantizedInput::borrowed(x))
    }
    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor> {
        self.calls.lock().unwrap().push(ctx.x.rows());
        let x = ctx.x.as_f32("x")?;
        let slots = ctx.token_selected_slots.as_i32("slots")?;
        let h = ctx.x.row_len();
        let k = ctx.token_selected_slots.row_len();
        let w = ctx.token_final_scales.map(|s| s.as_f32("scales")).transpose()?;
        let mut out = vec![0.0; x.len()];
        for t in 0..ctx.x.rows() {
            let f: f32 = (0..k)
                .map(|j| w.map_or(1.0, |w| w[t * k + j]) * (slots[t * k + j] + 1) as f32)
                .sum();
            for i in 0..h {
                out[t * h + i] = x[t * h + i] * f;
            }
        }
        Tensor::from_f32(ctx.x.shape().to_vec(), out)
    }
    fn create_weights(&mut self) -> Result<()> {
        Ok(())
    }
    fn load_weights(&mut self, _: &dyn WeightSource, _: bool) -> Result<()> {
        Ok(())
    }
    fn post_load_weights(&mut self) -> Result<()> {
        Ok(())
    }
    fn process_weights_after_loading(&mut self) -> Result<()> {
        Ok(())
    }
    fn pre_reload_weights(&mut self) -> Result<()> {
        Ok(())
    }
    fn quant_method(&self) -> &dyn QuantMethod {
        &NoQuant
    }
    fn layout(&self) -> &LayerLayout {
        &self.layout
    }
    fn expert_weights(&self) -> &ExpertWeights {
        &self.weights
    }
    fn expert_weights_mut(&mut self) -> &mut ExpertWeights {
        &mut self.weights
    }
}

/// Records every hook with its flags; routes expert e to slot `e + offset`.
pub struct RecordingBalancer {
    pub log: Arc<Mutex<Vec<String>>>,
    pub dynamic: bool,
    pub repeats: usize,
    pub offset: i32,
}

impl RecordingBalancer {
    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl LoadBalancer for RecordingBalancer {
    fn is_dynamic(&self) -> bool {
        self.dynamic
    }
    fn repeat_count(&self) -> usize {
        self.repeats
    }
    fn start_wait_gpu_stage(&mut self) -> Result<()> {
        self.push("start_wait_gpu".into());
        Ok(())
    }
    fn done_wait_gpu_stage(&mut self) -> Result<()> {
        self.push("done_wait_gpu".into());
        Ok(())
    }
    fn update_statistic(&mut self, ids: &Tensor, first: bool, last: bool, ignore_allreduce: bool) -> Result<()> {
        self.push(format!(
            "statistic(rows={}, first={first}, last={last}, ignore_allreduce={ignore_allreduce})",
            ids.rows()
        ));
        Ok(())
    }
    fn route(&mut self, ids: &Tensor, _use_dp: bool) -> Result<Tensor> {
        self.push(format!("route(rows={})", ids.rows()));
        let v = ids.as_i32("ids")?.iter().map(|e| e + self.offset).collect();
        Tensor::from_i32(ids.shape().to_vec(), v)
    }
    fn start_set_cpu_stage(&mut self) -> Result<()> {
        self.push("start_set_cpu".into());
        Ok(())
    }
    fn done_set_cpu_stage(&mut self) -> Result<()> {
        self.push("done_set_cpu".into());
        Ok(())
    }
}

/// A world-of-one strategy that records dispatch/combine order; `alltoall` decides how the
/// scheduler treats it.
pub struct RecordingComm {
    pub log: Arc<Mutex<Vec<String>>>,
    pub alltoall: bool,
    pub feasible: bool,
    pub post_quant: bool,
}

impl Communication for RecordingComm {
    fn name(&self) -> &'static str {
        if self.alltoall {
            "recording-alltoall"
        } else {
            "recording-allgather"
        }
    }
    fn is_platform_supported(&self) -> bool {
        true
    }
    fn is_workload_feasible(&self, _: &[usize], _: usize) -> bool {
        self.feasible
    }
    fn supports_post_quant_dispatch(&self) -> bool {
        self.post_quant
    }
    fn is_alltoall(&self) -> bool {
        self.alltoall
    }
    fn prepare_dispatch(&mut self, slots: &Tensor, list: &[usize]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("prepare(rows={}, list={list:?})", slots.rows()));
        Ok(())
    }
    fn dispatch<'a>(&mut self, p: DispatchPayload<'a>, list: &[usize], pad: bool) -> Result<DispatchPayload<'a>> {
        self.log
            .lock()
            .unwrap()
            .push(format!("dispatch(rows={}, list={list:?}, padded={pad})", p.x.rows()));
        Ok(p)
    }
    fn combine(&mut self, out: Tensor, max: usize) -> Result<Tensor> {
        self.log
            .lock()
            .unwrap()
            .push(format!("combine(rows={}, max={max})", out.rows()));
        Ok(out)
    }
    fn destroy(&mut self) -> Result<()> {
        self.log.lock().unwrap().push("destroy".into());
        Ok(())
    }
}

/// A comm handle over an optional strategy, without fallback.
pub struct Slot(pub Option<Box<dyn Communication>>);

impl CommHandle for Slot {
    fn strategy(&mut self) -> Option<&mut (dyn Communication + 'static)> {
        self.0.as_deref_mut()
    }
    fn determine_communication_method(&mut self, _: &[usize], _: usize) -> Result<()> {
        Ok(())
    }
}

/// `x[t] = [t + 1, -(t + 1)]`.
pub fn ramp(t: usize) -> Tensor {
    Tensor::from_f32(
        vec![t, 2],
        (0..t).flat_map(|i| [(i + 1) as f32, -((i + 1) as f32)]).collect(),
    )
    .unwrap()
}
