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
    /// The epoch as a raw counter reading.
    origin_raw: u64,
    /// Milliseconds per counter tick as a 64.64 fixed-point fraction: a read is one counter
    /// read and one widening multiply, with no divide.
    ms_per_tick: u64,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        // quanta's own scale, read off a long span so the rounding is far below a millisecond
        // a year: nanoseconds per 2^40 ticks, times 2^24 / 10^6, is milliseconds per tick
        // times 2^64.
        let span = 1u64 << 40;
        let nanos = u128::from(clock.delta_as_nanos(1, 1 + span));
        let ms_per_tick = u64::try_from((nanos << 24) / 1_000_000).unwrap_or(u64::MAX);
        let origin_raw = clock.raw();
        MonotonicClock {
            clock,
            origin_raw,
            ms_per_tick,
        }
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
        let ticks = self.clock.raw().saturating_sub(self.origin_raw);
        ((u128::from(ticks) * u128::from(self.ms_per_tick)) >> 64) as u64
    }
}

/// The clock a limiter reads on every call: the default clock without a virtual call, or an
/// injected one.
#[derive(Debug, Clone)]
pub(crate) enum Time {
    Monotonic(MonotonicClock),
    Injected(Arc<dyn Clock>),
}

impl Time {
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            Time::Monotonic(clock) => clock.now_ms(),
            Time::Injected(clock) => clock.now_ms(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_point_scale_agrees_with_quantas() {
        let clock = MonotonicClock::new();
        // An hour's worth of ticks, converted both ways: within a millisecond.
        let ticks_per_ms = (1u64 << 40) * 1_000_000 / clock.clock.delta_as_nanos(1, 1 + (1 << 40));
        for ms in [1u64, 999, 3_600_000, 86_400_000 * 30] {
            let ticks = ms * ticks_per_ms;
            let ours = ((u128::from(ticks) * u128::from(clock.ms_per_tick)) >> 64) as u64;
            let quantas = clock.clock.delta_as_nanos(0, ticks) / 1_000_000;
            assert!(ours.abs_diff(quantas) <= 1, "{ms} ms: {ours} vs {quantas}");
        }
    }

    #[test]
    fn the_monotonic_clock_keeps_pace_with_std() {
        let clock = Time::Monotonic(MonotonicClock::new());
        let start = std::time::Instant::now();
        let first = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let ours = clock.now_ms() - first;
        let std_ms = start.elapsed().as_millis() as u64;
        assert!(
            ours >= 29 && ours <= std_ms + 1,
            "{ours} ms against std's {std_ms}"
        );
    }
}
