//! Device row gathers and scatter-adds that the communication strategies pack and unpack exchanges with. (build without the `cuda` feature: typed `NotCompiledWithCuda` errors).
