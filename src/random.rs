//! The suppressed strategy's admission draw, injectable so tests are deterministic.

use parking_lot::Mutex;

/// A source of uniform numbers in `[0, 1)`.
///
/// A draw is taken while the key's shard is locked: `next_f64` must not call back into the
/// limiter (not even to format it), or the thread waits on itself forever.
pub trait RandomSource: Send + Sync + std::fmt::Debug + 'static {
    /// The next uniform draw in `[0, 1)`.
    fn next_f64(&self) -> f64;
}

/// The default source: a thread-local wyrand (`fastrand`), seeded from the OS.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    #[inline]
    fn next_f64(&self) -> f64 {
        fastrand::f64()
    }
}

/// A seeded, shared generator: the same seed gives the same sequence of draws.
#[derive(Debug)]
pub struct SeededRandom(Mutex<fastrand::Rng>);

impl SeededRandom {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom(Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn next_f64(&self) -> f64 {
        self.0.lock().f64()
    }
}
