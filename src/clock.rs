//! Where the local core reads time. Tests inject a [`ManualClock`]; nothing sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic millisecond clock. The epoch is the clock's own; only differences matter.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the clock's epoch. Must never go backwards.
    fn now_ms(&self) -> u64;
}

/// The default clock: the CPU's invariant TSC through `quanta` where available (a few ns a
/// read), the OS monotonic clock otherwise.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    /// The epoch as a raw counter reading: each read is one counter read, one scaling
    /// multiply and a divide by a constant, with no `Instant` or `Duration` in between.
    origin_raw: u64,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin_raw = clock.raw();
        MonotonicClock { clock, origin_raw }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin_raw, self.clock.raw()) / 1_000_000
    }
}

/// A clock that moves only when told to; cheap to clone, clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms`; it is the caller's job not to go backwards.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
