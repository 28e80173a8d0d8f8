//! Communication of the MoE layer: process groups (collectives with deadlines) and the
//! dispatch/combine strategies built on them.
//!
//! Strategies: [`AllGatherReduceScatter`] (always feasible), [`AllToAll`] (two-sided,
//! variable counts) and [`PackedAllGather`] (one collective per dispatch, for small batches).
//! [`InProcessGroup`] runs ranks as threads of one process, for fast tests of every
//! multi-rank rule; `MpiGroup` (feature `mpi`) runs one rank per process over Open MPI;
//! `NcclGroup` (feature `nccl`) runs one rank per process and GPU over NCCL, on device tensors.
//! The strategies work on host and device tensors alike: the all-to-all's routing runs where
//! the slot ids are (on a device `moe_kernels::cuda::alltoall_route`, nothing read back; only
//! the per-rank counts reach the host, through one small all-gather), and the row packing and
//! unpacking run on the tensors' device (`moe_kernels::ops::gather_rows`, `segment_sum_rows`).

mod allgather;
mod alltoall;
mod inprocess;
#[cfg(feature = "mpi")]
mod mpi_group;
#[cfg(feature = "nccl")]
mod nccl_group;
#[cfg(all(feature = "nccl", feature = "mpi"))]
mod nccl_mpi;
mod packed;
mod rows;

pub use allgather::AllGatherReduceScatter;
pub use alltoall::{ALLGATHER_PREFERRED_SHARE, AllToAll, expected_peer_share};
pub use inprocess::InProcessGroup;
#[cfg(feature = "mpi")]
pub use mpi_group::MpiGroup;
#[cfg(feature = "nccl")]
pub use nccl_group::NcclGroup;
pub use packed::PackedAllGather;
pub use rows::{split_rows_by_counts, sum_tensors};
