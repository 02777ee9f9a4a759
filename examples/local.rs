//! The seed document's local suppressed example, with only the crate name changed: the
//! code is `examples/seeds/local_suppressed.rs`, included verbatim.
//!
//! Its `RateLimiterOptions { local }` literal has no `redis` field, so, exactly as in the
//! seed, it builds without the `redis-tokio` feature: `cargo run --example local`.

#[cfg(not(feature = "redis-tokio"))]
include!("seeds/local_suppressed.rs");

#[cfg(feature = "redis-tokio")]
fn main() {
    eprintln!(
        "examples/local.rs is the seed's local-only example: with `redis-tokio` on, \
         RateLimiterOptions also needs a `redis` field. Run `cargo run --example local` \
         without features."
    );
}
