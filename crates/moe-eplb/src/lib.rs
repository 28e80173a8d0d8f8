//! Expert-parallel load balancing, as plain data and pure functions: the slot/expert
//! vocabulary, and expert-to-slot routing over a placement.
//!
//! This crate touches no device memory and does no I/O; it consumes expert ids and emits
//! slot ids (and, with dynamic balancing, placement plans).

mod placement;
mod static_balancer;

pub use placement::Placement;
pub use static_balancer::StaticBalancer;
