//! The assembled layer through its public API: selection, lifecycle, repeat bookkeeping,
//! static EPLB placements and refusals of impossible configurations.

mod assembly;
mod random;
