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
    origin: quanta::Instant,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.now();
        MonotonicClock { clock, origin }
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
        self.clock.now().duration_since(self.origin).as_millis() as u64
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
