//! Scheduler behaviour at its own boundary: chunking, EPLB hook order, weight-on-input and
//! communication ordering, driven through test doubles of the backend, the balancer and the
//! strategy (the real backends are tested in `moe-backends` and across the matrix).

mod doubles;
mod eplb_hooks;
mod forward;
mod fused;
