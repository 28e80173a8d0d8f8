//! The registry of backends: the only place that names concrete backend types. Entries are
//! data (name, verdict, capabilities, constructor) in priority order, so the factory and the
//! assembler never branch on a backend's type or name.

use moe_backends::cpu::CpuBackend;
use moe_backends::cpu_fused::FusedCpuBackend;
use moe_backends::cuda::CudaBackend;
use moe_backends::reference::ReferenceBackend;
use moe_core::{Capabilities, Eligibility, ExpertPartition, MoeBackend, MoeConfig, MoeDeployment, MoeProblem, Result};

/// One backend, as the factory sees it.
#[derive(Clone, Copy)]
pub struct BackendEntry {
    pub name: &'static str,
    pub can_implement: fn(&MoeProblem, &MoeDeployment) -> Eligibility,
    pub capabilities: fn() -> Capabilities,
    pub build: fn(&MoeConfig, ExpertPartition) -> Result<Box<dyn MoeBackend>>,
}

impl std::fmt::Debug for BackendEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn build<B: MoeBackend + 'static>(config: &MoeConfig, partition: ExpertPartition) -> Result<Box<dyn MoeBackend>> {
    Ok(Box::new(B::create(config, partition)?))
}

const fn entry<B: MoeBackend + 'static>(name: &'static str) -> BackendEntry {
    BackendEntry {
        name,
        can_implement: B::can_implement,
        capabilities: B::declared_capabilities,
        build: build::<B>,
    }
}

/// Every backend, in the order candidates are tried (fastest first; the reference oracle last).
/// The one list of backends: [`BACKEND_NAMES`] is derived from it, and `cargo xtask
/// check-boundaries` reads the names and types of these `entry::<Type>("name")` lines.
const ENTRIES: [BackendEntry; 4] = [
    // Rejected with `DepMissing` where no GPU or no `cuda` build is present.
    entry::<CudaBackend>("cuda"),
    entry::<CpuBackend>("cpu"),
    entry::<FusedCpuBackend>("cpu-fused"),
    entry::<ReferenceBackend>("reference"),
];

/// Every backend, in the order candidates are tried.
pub static REGISTRY: &[BackendEntry] = &ENTRIES;

/// Names accepted by `MoeConfig::backend` and the CLI's `--backend`: the registry's, in its order.
pub const BACKEND_NAMES: &[&str] = &names(&ENTRIES);

const fn names<const N: usize>(entries: &[BackendEntry; N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = entries[i].name;
        i += 1;
    }
    out
}

/// The backend the factory falls back to when a requested family cannot run the problem.
pub(crate) const FALLBACK: &str = "cpu";

/// Families that must fail rather than degrade (the oracle never hides behind a fallback).
pub(crate) const NO_FALLBACK: &[&str] = &["reference"];

/// Members of a backend family, in priority order (`None` for an unknown family).
pub(crate) fn family(registry: &'static [BackendEntry], name: &str) -> Option<Vec<&'static BackendEntry>> {
    let members: Vec<_> = registry.iter().filter(|e| e.name == name).collect();
    (!members.is_empty()).then_some(members)
}

pub(crate) fn lookup(registry: &'static [BackendEntry], name: &str) -> Option<&'static BackendEntry> {
    registry.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_registry_and_instances() {
        let names: Vec<_> = REGISTRY.iter().map(|e| e.name).collect();
        assert_eq!(names, BACKEND_NAMES);
        for e in REGISTRY {
            let config = MoeConfig::new(
                4,
                8,
                8,
                moe_core::DType::F32,
                moe_core::RoutingMethod::Renormalize { top_k: 2 },
            );
            let p = ExpertPartition::compute(&config, true).unwrap();
            let b = match (e.build)(&config, p) {
                Ok(b) => b,
                // The only backend that may fail to build is the device one, and only where
                // this process has no CUDA device (or no `cuda` build) to open.
                Err(err) => {
                    assert!(
                        e.name == "cuda" && moe_kernels::cuda::CudaDevice::count() == 0,
                        "{}: {err}",
                        e.name
                    );
                    continue;
                }
            };
            assert_eq!(b.name(), e.name, "registry name must be the backend's own name");
            assert_eq!(b.capabilities(), (e.capabilities)());
        }
    }
}
