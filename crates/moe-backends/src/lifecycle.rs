//! The weight lifecycle shared by the host backends: construction checks, the quant method,
//! the layout and partition, and the stage machine of the expert weights (core spec §6.5).
//!
//! ```text
//!  (no weights) --create_weights--> Created --load_weights(partial)--> Created
//!                                     |  \--load_weights(full) / process_weights_after_loading
//!                                     |                              v
//!                                     +<----pre_reload_weights---- Processed --post_load_weights (idempotent)
//! ```
//!
//! `run_moe` needs `Processed`. Loading over processed weights without `pre_reload_weights`
//! is refused, so a reload is always explicit. The stage lives here, not in the quant
//! method, so both backends enforce the same order with one implementation.

use moe_core::{
    Capabilities, Eligibility, ExpertPartition, ExpertWeights, LayerLayout, MoeConfig, MoeDeployment, MoeEnvironment,
    MoeError, MoeProblem, QuantizedInput, Result, Tensor, WeightSource,
};
use moe_kernels::ops;
use moe_quant::HostQuantMethod;

use crate::capabilities;

/// Where the expert weights are in their lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `create_weights` has not run.
    Empty,
    /// Tensors allocated; slots may be (partially) loaded.
    Created,
    /// All slots loaded and processed: ready for `run_moe`.
    Processed,
}

/// One rank's experts of a layer, with their quant method and lifecycle stage.
pub(crate) struct ExpertLayer {
    pub config: MoeConfig,
    pub partition: ExpertPartition,
    pub layout: LayerLayout,
    /// The format's quant method, with the kernel view of each slot.
    pub quant: Box<dyn HostQuantMethod>,
    pub weights: ExpertWeights,
    stage: Stage,
}

/// Checks that `partition` describes this config's slots (the assembler computes it from
/// the same config; a mismatch is a wiring error worth a clear message).
fn check_partition(config: &MoeConfig, p: &ExpertPartition) -> Result<()> {
    let expected_slots = config.eplb.as_ref().map_or(config.num_experts, |e| e.num_slots);
    let problem = if p.num_experts != config.num_experts {
        Some(format!("has {} experts, config {}", p.num_experts, config.num_experts))
    } else if p.num_slots != expected_slots {
        Some(format!("has {} slots, config {expected_slots}", p.num_slots))
    } else if (p.ep_size, p.ep_rank) != (config.parallel.ep_size, config.parallel.ep_rank) {
        Some(format!(
            "is for EP rank {} of {}, config for rank {} of {}",
            p.ep_rank, p.ep_size, config.parallel.ep_rank, config.parallel.ep_size
        ))
    } else if p.slot_start > p.slot_end || p.slot_end > p.num_slots {
        Some(format!(
            "local slots {}..{} do not lie within 0..{}",
            p.slot_start, p.slot_end, p.num_slots
        ))
    } else if p.initial_global_assignments.len() != p.num_slots {
        Some(format!(
            "assigns {} slots, expected {}",
            p.initial_global_assignments.len(),
            p.num_slots
        ))
    } else {
        let bad = p
            .initial_global_assignments
            .iter()
            .enumerate()
            .find(|(_, e)| **e >= p.num_experts);
        bad.map(|(s, e)| format!("assigns slot {s} to expert {e}"))
    };
    match problem {
        Some(detail) => Err(MoeError::config("partition", format!("the expert partition {detail}"))),
        None => Ok(()),
    }
}

impl ExpertLayer {
    /// Validates `config` and `partition`, applies the capability gate of `backend` and
    /// selects the quant method. No weights are allocated yet.
    pub fn new(
        backend: &'static str,
        caps: &Capabilities,
        config: &MoeConfig,
        partition: ExpertPartition,
    ) -> Result<Self> {
        config.validate()?;
        check_partition(config, &partition)?;
        // The gate reads no machine facts, so an empty environment is enough here.
        let env = MoeEnvironment {
            cpu_threads: 0,
            cuda_sm: None,
            available_deps: Vec::new(),
        };
        let deployment = MoeDeployment::from_config(config, env);
        if let Eligibility::No { reason, detail } =
            capabilities::check(backend, caps, &MoeProblem::from_config(config), &deployment)
        {
            return Err(MoeError::Unsupported {
                backend: backend.into(),
                reason,
                detail,
            });
        }
        let quant = moe_quant::select_host_quant_method(&config.quant)?;
        let layout = LayerLayout::new(config, &partition);
        Ok(ExpertLayer {
            config: config.clone(),
            partition,
            layout,
            quant,
            weights: ExpertWeights::default(),
            stage: Stage::Empty,
        })
    }

    pub fn create_weights(&mut self) -> Result<()> {
        self.weights = self.quant.create_weights(&self.layout)?;
        self.stage = Stage::Created;
        Ok(())
    }

    pub fn load_weights(&mut self, src: &dyn WeightSource, allow_partial: bool) -> Result<()> {
        match self.stage {
            Stage::Empty => return Err(MoeError::lifecycle("load_weights before create_weights")),
            Stage::Processed => {
                return Err(MoeError::lifecycle(
                    "weights are already loaded and processed; call pre_reload_weights before loading new ones",
                ));
            }
            Stage::Created => {}
        }
        self.quant
            .load_weights(&mut self.weights, &self.layout, src, allow_partial)?;
        if !allow_partial {
            self.process_weights_after_loading()?;
        }
        Ok(())
    }

    pub fn process_weights_after_loading(&mut self) -> Result<()> {
        match self.stage {
            Stage::Empty => Err(MoeError::lifecycle(
                "process_weights_after_loading before create_weights",
            )),
            Stage::Processed => Ok(()),
            Stage::Created => {
                self.quant
                    .process_weights_after_loading(&mut self.weights, &self.layout)?;
                self.quant.setup_quant_scales(&mut self.weights, &self.layout)?;
                self.stage = Stage::Processed;
                Ok(())
            }
        }
    }

    pub fn post_load_weights(&mut self) -> Result<()> {
        if self.stage != Stage::Processed {
            return Err(MoeError::lifecycle(
                "post_load_weights before all weights were loaded and processed",
            ));
        }
        if !self.weights.transformed {
            self.quant.transform_weights(&mut self.weights, &self.layout)?;
        }
        Ok(())
    }

    pub fn pre_reload_weights(&mut self) -> Result<()> {
        if self.stage == Stage::Empty {
            return Err(MoeError::lifecycle("pre_reload_weights before create_weights"));
        }
        // Keep the allocations; every slot must be loaded again before the next forward.
        self.weights.loaded.iter_mut().for_each(|l| *l = false);
        self.weights.transformed = false;
        self.stage = Stage::Created;
        Ok(())
    }

    /// Errors unless the weights are ready for `run_moe`.
    pub fn ensure_ready(&self) -> Result<()> {
        match self.stage {
            Stage::Processed => Ok(()),
            Stage::Empty => Err(MoeError::lifecycle("run_moe before create_weights and load_weights")),
            Stage::Created => Err(MoeError::lifecycle(
                "run_moe before the weights were fully loaded and processed (process_weights_after_loading)",
            )),
        }
    }

    /// The quant method's activation quantization, owned: what the `cuda` backend hands its
    /// kernels (its inputs are device tensors in production, whose clone shares the buffer).
    pub fn quantize_input(&self, x: &Tensor) -> Result<QuantizedInput<'static>> {
        Ok(self.quant.quantize_input(x, &self.weights)?.into_owned())
    }

    /// The host backends' `quantize_input`: FP8 activations become the payload that crosses
    /// ranks (E4M3 codes, one byte an element, and f32 group scales as `x_sf`; see
    /// `ops::quantize_activations`), every other format what its quant method gives, which
    /// for the formats that read activations as they are is `x` itself, borrowed.
    pub fn quantize_payload<'a>(&self, x: &'a Tensor) -> Result<QuantizedInput<'a>> {
        match ops::quantize_activations(&self.quant.input_quant(&self.weights)?, x)? {
            Some((x, x_sf)) => Ok(QuantizedInput::owned(x, x_sf)),
            None => self.quant.quantize_input(x, &self.weights),
        }
    }

    /// The activations of a `run_moe` call as values: an FP8 payload of
    /// [`ExpertLayer::quantize_payload`] decoded to f32, `None` for activations that are values
    /// already. Errors on scales that do not fit the layer's quantization.
    pub fn decode_payload(&self, x: &Tensor, x_sf: Option<&Tensor>) -> Result<Option<Tensor>> {
        ops::decode_activations(&self.quant.input_quant(&self.weights)?, x, x_sf)
    }
}

/// Implements the `MoeBackend` methods that only forward to the backend's `layer:
/// ExpertLayer` field (lifecycle, quant method, layout, weights, `quantize_input`,
/// `supports_load_balancer`), so the host backends share one implementation of them.
macro_rules! delegate_to_expert_layer {
    () => {
        fn supports_load_balancer(&self) -> bool {
            // Routing happens outside run_moe: an EPLB balancer may rewrite ids into slots.
            true
        }

        fn quantize_input<'a>(&'a self, x: &'a moe_core::Tensor) -> moe_core::Result<moe_core::QuantizedInput<'a>> {
            self.layer.quantize_payload(x)
        }

        fn create_weights(&mut self) -> moe_core::Result<()> {
            self.layer.create_weights()
        }

        fn load_weights(&mut self, src: &dyn moe_core::WeightSource, allow_partial: bool) -> moe_core::Result<()> {
            self.layer.load_weights(src, allow_partial)
        }

        fn post_load_weights(&mut self) -> moe_core::Result<()> {
            self.layer.post_load_weights()
        }

        fn process_weights_after_loading(&mut self) -> moe_core::Result<()> {
            self.layer.process_weights_after_loading()
        }

        fn pre_reload_weights(&mut self) -> moe_core::Result<()> {
            self.layer.pre_reload_weights()
        }

        fn quant_method(&self) -> &dyn moe_core::QuantMethod {
            &*self.layer.quant
        }

        fn layout(&self) -> &moe_core::LayerLayout {
            &self.layer.layout
        }

        fn expert_weights(&self) -> &moe_core::ExpertWeights {
            &self.layer.weights
        }

        fn expert_weights_mut(&mut self) -> &mut moe_core::ExpertWeights {
            &mut self.layer.weights
        }
    };
}
pub(crate) use delegate_to_expert_layer;

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::{DType, QuantAlgo, RejectReason, RoutingMethod};

    fn config() -> MoeConfig {
        MoeConfig::new(4, 8, 8, DType::F32, RoutingMethod::Renormalize { top_k: 2 })
    }

    fn layer(c: &MoeConfig) -> Result<ExpertLayer> {
        let p = ExpertPartition::compute(c, true)?;
        ExpertLayer::new("test", &capabilities::host_capabilities(), c, p)
    }

    #[test]
    fn formats_are_gated_at_create_and_select_their_method() {
        let mut c = config();
        c.quant.algo = QuantAlgo::Nvfp4;
        assert_eq!(layer(&c).unwrap().quant.algo(), QuantAlgo::Nvfp4);
        c.quant.algo = QuantAlgo::Fp8Block;
        c.dtype = DType::F16;
        match layer(&c) {
            Err(MoeError::Unsupported { reason, detail, .. }) => {
                assert_eq!(reason, RejectReason::DtypeUnsupported);
                assert!(detail.contains("fp8_block"), "{detail}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("fp8_block on f16 must be refused"),
        }
    }

    #[test]
    fn mismatched_partition_is_a_config_error() {
        let c = config();
        let mut other = c.clone();
        other.parallel.ep_size = 2;
        let p = ExpertPartition::compute(&other, true).unwrap();
        let err = ExpertLayer::new("test", &capabilities::host_capabilities(), &c, p)
            .err()
            .unwrap();
        assert!(err.to_string().contains("EP rank 0 of 2"), "{err}");
    }

    #[test]
    fn stage_order_is_enforced() {
        let mut l = layer(&config()).unwrap();
        assert!(matches!(l.ensure_ready(), Err(MoeError::Lifecycle { .. })));
        assert!(matches!(
            l.process_weights_after_loading(),
            Err(MoeError::Lifecycle { .. })
        ));
        assert!(matches!(l.pre_reload_weights(), Err(MoeError::Lifecycle { .. })));
        l.create_weights().unwrap();
        assert!(matches!(l.post_load_weights(), Err(MoeError::Lifecycle { .. })));
        // Nothing loaded: processing names the first empty slot.
        let err = l.process_weights_after_loading().unwrap_err().to_string();
        assert!(err.contains("slot 0 (expert 0)"), "{err}");
        assert!(matches!(l.ensure_ready(), Err(MoeError::Lifecycle { .. })));
    }
}
