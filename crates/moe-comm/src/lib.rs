//! Communication of the MoE layer: process groups (collectives with deadlines) and the
//! dispatch/combine strategies built on them.
//!
//! Strategies: [`AllGatherReduceScatter`] (always feasible), [`AllToAll`] (two-sided,
//! variable counts) and [`PackedAllGather`] (one collective per dispatch, for small batches).
//! [`InProcessGroup`] runs ranks as threads of one process, for fast tests of every
//! multi-rank rule; `MpiGroup` (feature `mpi`) runs one rank per process over Open MPI.

mod allgather;
mod alltoall;
mod inprocess;
#[cfg(feature = "mpi")]
mod mpi_group;
mod packed;
mod rows;

pub use allgather::AllGatherReduceScatter;
pub use alltoall::AllToAll;
pub use inprocess::InProcessGroup;
#[cfg(feature = "mpi")]
pub use mpi_group::MpiGroup;
pub use packed::PackedAllGather;
pub use rows::{split_rows_by_counts, sum_tensors};
