//! The assembled layer through its public API: selection, lifecycle, repeat bookkeeping,
//! static EPLB placements, refusals of impossible configurations, and multi-rank layers over
//! in-process ranks (every strategy, EP and TP sizes, attention-DP padding, chunking, dead ranks),
//! and FP8 activations crossing ranks as codes and scales; and what a steady-state forward
//! allocates (`allocations`, whose counting `#[global_allocator]` counts only its own
//! measurements and leaves the other tests of this binary undisturbed).

mod allocations;
mod assembly;
mod dynamic_eplb;
mod multi_rank;
mod quantized_payload;
mod random;
