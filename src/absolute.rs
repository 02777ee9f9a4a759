//! The absolute strategy: admit iff the window's admitted usage plus the call fits the
//! capacity; a refusal records nothing and says how long to wait.

use crate::call::Call;
use crate::config::capacity;
use crate::window::{Window, WindowGrid};
use crate::{Error, RateLimitDecision};

/// What the infallible absolute `inc` answers for a malformed call (see the local module docs).
pub(crate) fn answer_for_invalid(err: &Error, window_seconds: u64) -> RateLimitDecision {
    match err {
        Error::ZeroCount => RateLimitDecision::Allowed,
        _ => RateLimitDecision::Rejected {
            window_size_seconds: window_seconds,
            retry_after_ms: u64::MAX,
            remaining_after_waiting: 0,
        },
    }
}

/// One key under the absolute strategy.
#[derive(Debug, Clone)]
pub(crate) struct AbsoluteState {
    /// The rate of the latest `inc`, used by `is_allowed`.
    rate: f64,
    window: Window<u64>,
}

impl AbsoluteState {
    /// The rate of the latest call (the key budget's eviction test reads it).
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    pub(crate) fn new(rate: f64) -> Self {
        AbsoluteState {
            rate,
            window: Window::default(),
        }
    }

    /// Admits the call if it fits, recording it.
    #[inline]
    pub(crate) fn inc(&mut self, geo: &WindowGrid, call: Call) -> RateLimitDecision {
        self.rate = call.rate;
        self.window.expire(geo, call.now_ms);
        if capacity::fits_more(self.window.total(), call.count, call.cap) {
            self.window.add(geo, call.now_ms, call.count);
            RateLimitDecision::Allowed
        } else {
            self.rejection(geo, call.now_ms, call.count, call.cap)
        }
    }

    /// Whether one more unit at the latest rate would be admitted now; records nothing.
    pub(crate) fn check(&mut self, geo: &WindowGrid, now_ms: u64) -> RateLimitDecision {
        self.window.expire(geo, now_ms);
        let cap = capacity::of(self.rate, geo.window_seconds());
        if capacity::fits_more(self.window.total(), 1, cap) {
            RateLimitDecision::Allowed
        } else {
            self.rejection(geo, now_ms, 1, cap)
        }
    }

    #[cold]
    fn rejection(&self, geo: &WindowGrid, now_ms: u64, count: u64, cap: f64) -> RateLimitDecision {
        let (retry_after_ms, remaining_after_waiting) = self
            .window
            .release_until(geo, now_ms, |left| capacity::fits_more(left, count, cap))
            .unwrap_or((u64::MAX, 0));
        RateLimitDecision::Rejected {
            window_size_seconds: geo.window_seconds(),
            retry_after_ms,
            remaining_after_waiting,
        }
    }

    /// Records `count` admitted units decided elsewhere (the hybrid provider's shares).
    #[cfg(feature = "redis-tokio")]
    #[inline]
    pub(crate) fn record(&mut self, geo: &WindowGrid, now_ms: u64, rate: f64, count: u64) {
        self.rate = rate;
        self.window.expire(geo, now_ms);
        self.window.add(geo, now_ms, count);
    }

    /// Admitted usage still inside the window at `now_ms`.
    pub(crate) fn usage(&mut self, geo: &WindowGrid, now_ms: u64) -> u64 {
        self.window.expire(geo, now_ms);
        self.window.total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::checked_capacity;

    fn geo(window_s: u64, group_ms: u64) -> WindowGrid {
        WindowGrid::for_tests(window_s, group_ms)
    }

    #[test]
    fn admits_up_to_real_capacity_then_reports_wait() {
        let g = geo(15, 1000);
        let cap = checked_capacity(0.7, 15, 1).unwrap(); // 10.5
        let call = |now_ms| Call {
            now_ms,
            rate: 0.7,
            count: 1,
            cap,
        };
        let mut s = AbsoluteState::new(0.7);
        for i in 0..10 {
            assert_eq!(
                s.inc(&g, call(i * 100)),
                RateLimitDecision::Allowed,
                "call {i}"
            );
        }
        // 10 admitted in bucket 0 (expires at 16000); an 11th does not fit 10.5.
        assert_eq!(
            s.inc(&g, call(1000)),
            RateLimitDecision::Rejected {
                window_size_seconds: 15,
                retry_after_ms: 15000,
                remaining_after_waiting: 0
            }
        );
        assert_eq!(s.usage(&g, 1000), 10, "a rejection records nothing");
    }
}
