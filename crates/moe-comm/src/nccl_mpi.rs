//! NCCL bootstrapped over MPI (features `nccl` and `mpi`): rank 0's unique id is broadcast over
//! the MPI world, then every rank joins the NCCL communicator on its GPU.

use moe_core::{Deadline, Result};

use crate::{MpiGroup, NcclGroup};

impl NcclGroup {
    /// Joins the NCCL world of the MPI ranks (same rank numbers) on GPU `device_ordinal`.
    pub fn from_mpi(mpi: &MpiGroup, device_ordinal: usize, deadline: Deadline) -> Result<NcclGroup> {
        NcclGroup::from_group(mpi, device_ordinal, deadline)
    }
}
