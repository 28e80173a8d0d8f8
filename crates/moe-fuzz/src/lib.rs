//! A mutation fuzzer that runs on stable Rust, for the parsers every user input goes through:
//! `config.json` ([`moe_hf::HfConfig`]), safetensors files ([`moe_hf::Checkpoint`]), placement
//! YAML ([`moe_eplb::load_placement_yaml`]), load JSON (`{"load": ...}` and
//! [`moe_eplb::validate_load`]) and the planner ([`moe_eplb::plan`]).
//!
//! cargo-fuzz needs nightly and sanitizer builds; these targets only need to show that hostile
//! input gives a typed error, never a panic, an abort or unbounded work. So each target is a
//! plain function over bytes that calls the real code, and [`run`] feeds it mutations of a
//! committed seed corpus (`corpus/<target>/`) from a seeded PRNG under `catch_unwind` with a
//! time bound per input. Inputs whose outcome (success or the error's text, digits removed)
//! was not seen before join the corpus, a cheap stand-in for coverage feedback. A panic or a
//! slow input is saved under the crash directory and fails the run.

pub mod mutate;
pub mod runner;
pub mod targets;

pub use runner::{Finding, Options, Report, run};
pub use targets::{TARGETS, Target};
