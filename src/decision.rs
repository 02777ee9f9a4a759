//! What a limiter answers.

/// The outcome of one `inc` (or `is_allowed`) call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateLimitDecision {
    /// Admitted; the increment was recorded.
    Allowed,

    /// Refused by the absolute strategy; nothing was recorded.
    Rejected {
        /// The limiter's window, in seconds.
        window_size_seconds: u64,
        /// The shortest wait after which the same call would be admitted, given the usage
        /// recorded now (enough of the oldest buckets expire). `u64::MAX` means never: the
        /// call asks for more than the window can hold (see [`crate::Error::CountAboveCapacity`]).
        retry_after_ms: u64,
        /// The usage that still counts once `retry_after_ms` has passed.
        remaining_after_waiting: u64,
    },

    /// Decided by the suppressed strategy while the key is at or over its capacity.
    Suppressed {
        /// The key's suppression factor in `[0, 1]`: the share of calls being shed.
        suppression_factor: f64,
        /// Whether this call was admitted. Always check it.
        is_allowed: bool,
    },
}

impl RateLimitDecision {
    /// Whether the call was admitted: `Allowed`, or `Suppressed { is_allowed: true, .. }`.
    #[inline]
    pub fn is_allowed(&self) -> bool {
        match self {
            RateLimitDecision::Allowed => true,
            RateLimitDecision::Rejected { .. } => false,
            RateLimitDecision::Suppressed { is_allowed, .. } => *is_allowed,
        }
    }
}
