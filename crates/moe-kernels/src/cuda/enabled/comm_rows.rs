//! Device row gathers and scatter-adds that the communication strategies pack and unpack exchanges with.
