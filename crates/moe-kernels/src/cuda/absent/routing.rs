//! Routing of router logits on the device: every method of `moe_core::RoutingMethod`, in f32, with the CPU's tie rule. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).
