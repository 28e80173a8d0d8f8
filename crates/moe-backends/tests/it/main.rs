//! Integration tests of the host backends: the CPU backend against the reference oracle,
//! EP/TP/EPLB decompositions against the undivided layer, lifecycle and input errors,
//! capability verdicts, and every quantized format against its dequantized-weight oracle.

mod common;
#[cfg(feature = "cuda")]
mod cuda;
mod differential;
mod errors;
mod gates;
mod parallel;
mod quantized;
