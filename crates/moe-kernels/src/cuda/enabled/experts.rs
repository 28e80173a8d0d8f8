//! The expert computation of one MoE layer on the device: weights uploaded in kernel layouts, token permutation, grouped GEMMs with the activation fused, finalize.
