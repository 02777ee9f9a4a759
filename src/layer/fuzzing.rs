//! The proxy-chain parsers, public only to the cargo-fuzz target in `fuzz/`: `cargo fuzz`
//! builds every crate with `--cfg fuzzing`, and only then is anything here. Not part of
//! the API.
// `fuzzing` is not a cfg cargo knows of; it is set by cargo-fuzz alone.
#![allow(unexpected_cfgs)]

#[cfg(fuzzing)]
pub use super::extract::forwarded::{Hop, forwarded_hops, xff_hops};
