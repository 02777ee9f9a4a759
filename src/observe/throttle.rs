//! [`WarnThrottle`]: at most one warning line per interval, each with the count it stands for.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lets one event through per `interval_ms` and counts the rest: an outage writes a line a
/// second (with how many failures it stands for), not a line a request.
#[derive(Debug)]
pub(crate) struct WarnThrottle {
    interval_ms: u64,
    /// When the last line was let through, plus one (0: never).
    last: AtomicU64,
    /// Events since the last line was let through.
    pending: AtomicU64,
}

impl WarnThrottle {
    pub(crate) const fn new(interval_ms: u64) -> Self {
        WarnThrottle {
            interval_ms,
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Counts one event at `now_ms`; `Some(n)` when a line should be written now, `n` the
    /// events it stands for (this one and those held back since the last line).
    pub(crate) fn event(&self, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_add(1) < last.saturating_add(self.interval_ms) {
            return None;
        }
        // One caller wins the slot; the others count toward the next line.
        self.last
            .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carrying_the_count() {
        let t = WarnThrottle::new(1_000);
        assert_eq!(t.event(5), Some(1), "the first event writes at once");
        for now in 5..1_005 {
            assert_eq!(t.event(now), None, "{now}");
        }
        assert_eq!(t.event(1_005), Some(1_001));
        assert_eq!(t.event(1_006), None);
        assert_eq!(t.event(9_000), Some(2));
    }

    #[test]
    fn threads_write_one_line_and_lose_no_count() {
        let t = WarnThrottle::new(1_000);
        let lines = AtomicU64::new(0);
        let counted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(n) = t.event(0) {
                            lines.fetch_add(1, Ordering::Relaxed);
                            counted.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(lines.load(Ordering::Relaxed), 1);
        let rest = t.event(1_000).unwrap();
        assert_eq!(counted.load(Ordering::Relaxed) + rest, 40_001);
    }
}
