//! The one place the machine is probed; the result is frozen into a `MoeEnvironment` that
//! `can_implement` verdicts read (they never probe themselves).

use moe_core::MoeEnvironment;
use moe_kernels::cuda::CudaDevice;

/// Probes what this process may use: CPU threads now, devices when their features are built.
pub fn probe_environment() -> MoeEnvironment {
    // Device 0 stands for the machine's GPUs: a layer pinned to another ordinal is checked
    // again when its backend opens that device.
    let cuda = if CudaDevice::count() > 0 {
        CudaDevice::new(0).ok()
    } else {
        None
    };
    let mut available_deps = Vec::new();
    if cuda.is_some() {
        available_deps.push("cuda".to_string());
    }
    MoeEnvironment {
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cuda_sm: cuda.map(|d| d.sm()),
        available_deps,
    }
}
