//! Integration tests of the host backends: the CPU backend against the reference oracle,
//! EP/TP/EPLB decompositions against the undivided layer, lifecycle and input errors, and
//! capability verdicts.

mod common;
mod differential;
mod errors;
mod gates;
mod parallel;
