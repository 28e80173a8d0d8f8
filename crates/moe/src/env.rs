//! The one place the machine is probed; the result is frozen into a `MoeEnvironment` that
//! `can_implement` verdicts read (they never probe themselves).

use moe_core::MoeEnvironment;

/// Probes what this process may use: CPU threads now, devices when their features are built.
pub fn probe_environment() -> MoeEnvironment {
    MoeEnvironment {
        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cuda_sm: None,
        available_deps: Vec::new(),
    }
}
