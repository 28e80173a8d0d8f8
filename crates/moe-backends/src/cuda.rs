//! The CUDA backend (`"cuda"`): the expert computation of `moe_kernels::cuda::DeviceExperts`
//! on one GPU, with the host backends' weight lifecycle.
//!
//! Weights are loaded and processed on the host by the layer's quant method exactly as for the
//! CPU backends, then uploaded once, at `post_load_weights`, in the kernels' layout (FP8 and
//! MXFP4 stay packed). Anything that may change the host weights afterwards (a reload, EPLB
//! migration through `expert_weights_mut`) drops the device copy, and the next forward uploads
//! again, so the device never computes with stale experts.
//!
//! `run_moe` takes device tensors (the production path: output on the device, nothing waits for
//! the device) or host tensors (tests, tools: inputs are uploaded and the output downloaded).
//!
//! In a build without the `cuda` feature the type exists and `create` fails with
//! `MoeError::NotCompiledWithCuda`; `can_implement` rejects it earlier with `DepMissing`.

use std::sync::{Arc, Mutex};

use moe_core::{
    Capabilities, DType, Eligibility, ExpertPartition, MoeBackend, MoeConfig, MoeDeployment, MoeError, MoeProblem,
    MoeRunContext, QuantAlgo, RejectReason, Result, Tensor,
};
use moe_kernels::cuda::{CudaDevice, DeviceExperts, download};

use crate::capabilities::{check, dtypes_in, full_capabilities};
use crate::lifecycle::ExpertLayer;
use crate::views::LayerViews;

/// Quant formats the CUDA kernels decode, with the activation dtypes they run them on.
pub const CUDA_QUANT_DTYPES: &[(QuantAlgo, &[DType])] = &[
    (QuantAlgo::None, &[DType::F32, DType::F16, DType::BF16]),
    (QuantAlgo::Fp8PerTensor, &[DType::F16, DType::BF16]),
    (QuantAlgo::Fp8Block, &[DType::BF16]),
    (QuantAlgo::W4A16Mxfp4, &[DType::BF16]),
];

/// Oldest compute capability the kernels compile for: the expert module's E4M3 conversions
/// (`cvt.rn.satfinite.e4m3x2.f32`) exist in PTX from sm_89 (Ada) on, so Ampere (8.0, 8.6),
/// whose bf16 `mma.sync` the kernels would otherwise run on, fails at its NVRTC compile (found
/// compiling the ahead-of-time kernels for sm_80). Refused here, before any kernel is asked for.
const MIN_SM: u32 = 89;

/// What the CUDA backend can run.
pub fn cuda_capabilities() -> Capabilities {
    full_capabilities("cuda", CUDA_QUANT_DTYPES)
}

/// The CUDA backend. See the module docs.
pub struct CudaBackend {
    layer: ExpertLayer,
    dev: CudaDevice,
    /// The device copy of the local slots; `None` until uploaded or after the host weights may
    /// have changed.
    experts: Mutex<Option<Arc<DeviceExperts>>>,
}

impl CudaBackend {
    pub const NAME: &'static str = "cuda";

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The device copy of the weights, uploaded now if there is none.
    fn experts(&self) -> Result<Arc<DeviceExperts>> {
        let mut guard = self.experts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = guard.as_ref() {
            return Ok(e.clone());
        }
        let views = LayerViews::new(&self.layer);
        let slots = (0..self.layer.partition.expert_size_per_partition())
            .map(|s| views.slot(s))
            .collect::<Result<Vec<_>>>()?;
        let e = Arc::new(DeviceExperts::upload(
            &self.dev,
            self.layer.config.dtype,
            views.dims,
            &slots,
        )?);
        tracing::debug!(device = %self.dev.location(), bytes = e.bytes(), slots = slots.len(), "uploaded experts");
        *guard = Some(e.clone());
        Ok(e)
    }

    fn drop_device_copy(&mut self) {
        *self.experts.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn reject(reason: RejectReason, detail: String) -> Eligibility {
    Eligibility::no(reason, detail)
}

impl MoeBackend for CudaBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_implement(problem: &MoeProblem, deployment: &MoeDeployment) -> Eligibility {
        let env = &deployment.env;
        if !env.available_deps.iter().any(|d| d == "cuda") {
            return reject(
                RejectReason::DepMissing,
                "backend `cuda` needs a CUDA device and a build with the `cuda` feature".into(),
            );
        }
        match env.cuda_sm {
            Some(sm) if sm >= MIN_SM => {}
            other => {
                return reject(
                    RejectReason::DeviceUnsupported,
                    format!("backend `cuda` needs compute capability {MIN_SM} or newer, the device has {other:?}"),
                );
            }
        }
        let verdict = check(Self::NAME, &cuda_capabilities(), problem, deployment);
        if !matches!(verdict, Eligibility::Ok) {
            return verdict;
        }
        let dtypes = dtypes_in(CUDA_QUANT_DTYPES, problem.quant);
        if !dtypes.contains(&problem.dtype_act) {
            return reject(
                RejectReason::DtypeUnsupported,
                format!(
                    "backend `cuda` runs quant format `{}` on {:?} activations, not {}",
                    problem.quant.as_str(),
                    dtypes,
                    problem.dtype_act
                ),
            );
        }
        // 16-byte vector loads of every row: 8 elements of a 16-bit type; 32 for MXFP4 scales.
        let align = match problem.quant {
            QuantAlgo::W4A16Mxfp4 => 32,
            QuantAlgo::Fp8PerTensor | QuantAlgo::Fp8Block => 16,
            _ => 8,
        };
        let tp = deployment.tp_size.max(1);
        for (what, v) in [
            ("hidden_size", problem.hidden_size),
            (
                "intermediate_size per TP rank",
                problem.intermediate_size.map(|i| i / tp),
            ),
        ] {
            if let Some(v) = v.filter(|v| v % align != 0) {
                return reject(
                    RejectReason::ShapeUnaligned,
                    format!("backend `cuda` needs {what} to be a multiple of {align}, got {v}"),
                );
            }
        }
        Eligibility::Ok
    }

    fn declared_capabilities() -> Capabilities {
        cuda_capabilities()
    }

    fn create(config: &MoeConfig, partition: ExpertPartition) -> Result<Self> {
        let dev = CudaDevice::new(config.cuda_device.unwrap_or(0))?;
        let layer = ExpertLayer::new(Self::NAME, &cuda_capabilities(), config, partition)?;
        Ok(CudaBackend {
            layer,
            dev,
            experts: Mutex::new(None),
        })
    }

    fn capabilities(&self) -> Capabilities {
        cuda_capabilities()
    }

    fn supports_load_balancer(&self) -> bool {
        true
    }

    fn quantize_input(&self, x: &Tensor) -> Result<moe_core::QuantizedInput<'_>> {
        self.layer.quantize_input(x)
    }

    fn run_moe(&self, ctx: &MoeRunContext<'_>) -> Result<Tensor> {
        self.layer.ensure_ready()?;
        if let Some(sf) = ctx.x_sf {
            return Err(MoeError::DTypeMismatch {
                what: "x_sf".into(),
                expected: "no activation scales (the CUDA kernels quantize activations themselves)".into(),
                actual: format!("{} {:?}", sf.dtype(), sf.shape()),
            });
        }
        let k = self.layer.config.top_k();
        let n = ctx.x.rows();
        ctx.token_selected_slots.expect_shape("token_selected_slots", &[n, k])?;
        let experts = self.experts()?;
        let host_in = ctx.x.is_host();
        let x = self.dev.upload(ctx.x)?;
        let slots = self.dev.upload(ctx.token_selected_slots)?;
        let scales = ctx.token_final_scales.map(|s| self.dev.upload(s)).transpose()?;
        let out = experts.forward(
            &x,
            &slots,
            scales.as_ref(),
            self.layer.partition.slot_start,
            ctx.output_dtype,
        )?;
        if host_in { download(&out) } else { Ok(out) }
    }

    fn create_weights(&mut self) -> Result<()> {
        self.drop_device_copy();
        self.layer.create_weights()
    }

    fn load_weights(&mut self, src: &dyn moe_core::WeightSource, allow_partial: bool) -> Result<()> {
        self.drop_device_copy();
        self.layer.load_weights(src, allow_partial)
    }

    fn post_load_weights(&mut self) -> Result<()> {
        self.layer.post_load_weights()?;
        self.experts().map(|_| ())
    }

    fn process_weights_after_loading(&mut self) -> Result<()> {
        self.drop_device_copy();
        self.layer.process_weights_after_loading()
    }

    fn pre_reload_weights(&mut self) -> Result<()> {
        self.drop_device_copy();
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
        // The caller may rewrite slots (EPLB migration): upload again before the next forward.
        self.drop_device_copy();
        &mut self.layer.weights
    }
}
