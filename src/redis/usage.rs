//! What an admitted decision knows of its key: the usage after the call, what is left, and
//! when the usage next falls. The Redis scripts return it with the decision, and the hybrid
//! provider reads it from the same state it decided on, so a caller that wants it (the
//! layer's `RateLimit` field on admitted responses) needs no second round trip.

use crate::policy::LimitStatus;

/// A key's usage right after an admitted call, from the decision itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Accepted units counted in the key's window after the call (the hybrid provider:
    /// Redis's count at its last refresh plus what this instance admitted since).
    pub used: u64,
    /// Whole calls of one unit the key still admits at the call's rate: capacity minus
    /// `used`, rounded down.
    pub remaining: u64,
    /// Milliseconds until the key's oldest counted bucket leaves the window (its usage next
    /// falls); at most the window.
    pub reset_ms: u64,
}

impl KeyUsage {
    /// `used` of a capacity `cap`, `reset_ms` capped at the window.
    pub(crate) fn new(cap: f64, used: u64, reset_ms: u64, window_seconds: u64) -> Self {
        KeyUsage {
            used,
            remaining: LimitStatus::remaining_of(cap, used),
            reset_ms: reset_ms.min(window_seconds.saturating_mul(1000)),
        }
    }
}
