//! The assembled layer through its public API: selection, lifecycle, repeat bookkeeping,
//! static EPLB placements, refusals of impossible configurations, and multi-rank layers over
//! in-process ranks (every strategy, EP and TP sizes, attention-DP padding, chunking, dead ranks).

mod assembly;
mod dynamic_eplb;
mod multi_rank;
mod random;
