//! Counters of the committer's work, readable through
//! [`HybridRateLimiter::stats`](super::HybridRateLimiter::stats).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) units_flushed: AtomicU64,
    pub(crate) repeats_skipped: AtomicU64,
    pub(crate) units_expired: AtomicU64,
    pub(crate) units_dropped: AtomicU64,
    pub(crate) pending_buckets: AtomicU64,
}

/// A snapshot of the hybrid provider's counters since the limiter was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HybridStats {
    /// Cycles whose every pipeline reached Redis.
    pub flushes: u64,
    /// Pipelines (or replies) that failed: Redis down, too slow, or an unreadable answer.
    /// Each failure is also logged with `tracing` at `warn`/`error`.
    pub flush_errors: u64,
    /// Key refreshes sent (one per dirty key per cycle, never one per caller).
    pub refreshes: u64,
    /// Accepted units that reached Redis. A batch Redis had already applied counts when its
    /// resend is skipped: the lost reply's expiry count is unknown then, so units that
    /// expired in that first application count here and not in `units_expired`.
    pub units_flushed: u64,
    /// Batches Redis had already applied (a reply lost, the batch resent): skipped there, so
    /// every increment lands exactly once.
    pub repeats_skipped: u64,
    /// Accepted units never sent because their bucket had left the window first (during an
    /// outage): they no longer counted anywhere.
    pub units_expired: u64,
    /// Accepted units dropped while still inside the window because unsent increments
    /// passed the memory bound ([`RateLimiterBuilder::hybrid_max_pending_buckets`]).
    ///
    /// [`RateLimiterBuilder::hybrid_max_pending_buckets`]: crate::RateLimiterBuilder::hybrid_max_pending_buckets
    pub units_dropped: u64,
    /// Buckets of unsent increments held in memory after the last cycle.
    pub pending_buckets: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> HybridStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HybridStats {
            flushes: get(&self.flushes),
            flush_errors: get(&self.flush_errors),
            refreshes: get(&self.refreshes),
            units_flushed: get(&self.units_flushed),
            repeats_skipped: get(&self.repeats_skipped),
            units_expired: get(&self.units_expired),
            units_dropped: get(&self.units_dropped),
            pending_buckets: get(&self.pending_buckets),
        }
    }
}
