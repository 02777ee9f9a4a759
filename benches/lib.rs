//! Benchmarks of sluicegate beside trypema, governor and tower_governor.
//!
//! This crate has no library code; the benches are its `[[bench]]` targets. From the
//! repository root: `cargo bench -p sluicegate-benches --bench ratios` (also `local`,
//! `memory`, `layer`, `redis`, `hybrid`).
#![forbid(unsafe_code)]
