//! Contracts of the MoE layer runtime.
//!
//! Every other crate of the workspace speaks the vocabulary defined here: the layer
//! configuration ([`MoeConfig`]), the selection types ([`MoeProblem`], [`MoeDeployment`],
//! [`Eligibility`]), the routing math ([`RoutingMethod`]), tensors whose storage may live on
//! the host or on a device ([`Tensor`]), the error type ([`MoeError`]), and the traits of the
//! owner boundaries ([`MoeBackend`], [`QuantMethod`], [`Communication`], [`ProcessGroup`],
//! [`LoadBalancer`], [`MoeScheduler`], [`WeightSource`]).
//!
//! This crate depends on no workspace crate and on no GPU or MPI crate
//! (`cargo xtask check-boundaries`, rule `graph`).

pub mod backend;
pub mod borrowed;
pub mod comm;
pub mod config;
pub mod dtype;
pub mod eplb;
pub mod error;
pub mod limits;
pub mod partition;
pub mod prng;
pub mod problem;
pub mod quant;
pub mod quant_format;
pub mod routing;
pub mod scheduler;
pub mod tensor;
pub mod weights;

pub use backend::{Capabilities, CommPlan, MoeBackend, MoeRunContext, QuantizedInput};
pub use borrowed::{BorrowedHostTensor, BorrowedWeights};
pub use comm::{CommHandle, Communication, Deadline, DispatchPayload, ProcessGroup};
pub use config::{Activation, EplbConfig, MoeConfig, ParallelConfig, QuantAlgo, QuantConfig};
pub use dtype::DType;
pub use eplb::{LoadBalancer, MigrationPlan, RebalanceReport, SlotMove};
pub use error::{MoeError, Result};
pub use partition::ExpertPartition;
pub use problem::{
    CommSelection, Eligibility, EplbSupportStatus, MoeDeployment, MoeEnvironment, MoeProblem, RejectReason,
    RejectedCandidate, ResolutionReport, SchedulerKind, SelectedBy,
};
pub use quant::{ExpertTensorRegistration, ExpertWeights, LayerLayout, QuantMethod};
pub use quant_format::{FORMATS, FormatDescriptor};
pub use routing::{RoutingMethod, RoutingOutput};
pub use scheduler::{ForwardArgs, LayerView, MoeScheduler};
pub use tensor::{DeviceStorage, HostStorage, Storage, Tensor, TensorView};
pub use weights::{MemoryWeights, WeightSource};
