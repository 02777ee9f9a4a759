//! What the layer reports: outcomes, key fingerprints for logs, rate-limited warnings, and
//! (feature `metrics`) counters, gauges and a histogram through the `metrics` facade.
//!
//! # Metrics (feature `metrics`)
//! Install any `metrics` recorder (a Prometheus exporter, OpenTelemetry) **before** building
//! the layers: each layer registers its counters once, when it is built, and a counter
//! registered before a recorder exists stays a no-op.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`REQUESTS_TOTAL`] | counter | `policy`, `outcome` | every request the layer saw, by [`Outcome`] |
//! | [`NEAR_LIMIT_TOTAL`] | counter | `policy` | admitted with at least 80 % of the quota used (Envoy's `near_limit`) |
//! | [`DECISION_SECONDS`] | histogram | `policy`, `provider` | how long a networked provider (Redis) took to decide; registered only by Redis layers (local and hybrid ones decide in memory) |
//! | [`HYBRID_FLUSHES_TOTAL`], [`HYBRID_FLUSH_ERRORS_TOTAL`], [`HYBRID_REFRESHES_TOTAL`], [`HYBRID_UNITS_DROPPED_TOTAL`] | counter | | the hybrid committer's work ([`HybridStats`](crate::hybrid::HybridStats)) |
//! | [`KEYS_HELD`] | gauge | `provider` (`local`, `hybrid`) | keys held in memory |
//!
//! Labels are bounded: a policy name is configuration, never a request's key. The
//! limiter-wide figures (the last two rows) are read, not pushed: call [`publish`] before
//! rendering (a `/metrics` handler) or every few seconds.
//!
//! # Logs (`tracing`)
//! A refusal or a shed is one `debug` event with the policy and the key's
//! [`fingerprint`], never the key itself; a would-be refusal in shadow mode is the same
//! event with `shadow = true`. Provider failures are `warn`, at most one line a second per
//! layer, each with the number of failures it stands for (`failures`): an outage writes a
//! line a second, not one a request.

#[cfg(feature = "metrics")]
mod metrics;
mod throttle;

#[cfg(feature = "metrics")]
pub use self::metrics::publish;
#[cfg(feature = "metrics")]
pub(crate) use self::metrics::{LayerMetrics, LimitCounters};
pub(crate) use throttle::WarnThrottle;

use std::fmt;
use std::hash::BuildHasher;
use std::sync::LazyLock;

/// `sluicegate_requests_total{policy, outcome}`.
pub const REQUESTS_TOTAL: &str = "sluicegate_requests_total";
/// `sluicegate_near_limit_total{policy}`.
pub const NEAR_LIMIT_TOTAL: &str = "sluicegate_near_limit_total";
/// `sluicegate_decision_duration_seconds{policy, provider}`.
pub const DECISION_SECONDS: &str = "sluicegate_decision_duration_seconds";
/// `sluicegate_hybrid_flushes_total`.
pub const HYBRID_FLUSHES_TOTAL: &str = "sluicegate_hybrid_flushes_total";
/// `sluicegate_hybrid_flush_errors_total`.
pub const HYBRID_FLUSH_ERRORS_TOTAL: &str = "sluicegate_hybrid_flush_errors_total";
/// `sluicegate_hybrid_refreshes_total`.
pub const HYBRID_REFRESHES_TOTAL: &str = "sluicegate_hybrid_refreshes_total";
/// `sluicegate_hybrid_units_dropped_total`.
pub const HYBRID_UNITS_DROPPED_TOTAL: &str = "sluicegate_hybrid_units_dropped_total";
/// `sluicegate_keys_held{provider}`.
pub const KEYS_HELD: &str = "sluicegate_keys_held";

/// The share of a quota used at or past which an admitted request counts as near the limit.
pub const NEAR_LIMIT_SHARE: f64 = 0.8;

/// What the layer did with one request: the `outcome` label of [`REQUESTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Admitted.
    Allowed,
    /// Refused by a limit (absolute strategy): `429`.
    Rejected,
    /// Shed by the suppressed strategy: `503`.
    Shed,
    /// Would have been refused or shed, let through by shadow mode.
    ShadowRejected,
    /// Exempt: not counted against any limit.
    Exempt,
    /// No key could be read from the request.
    KeyError,
    /// The provider failed (answered by the provider-error policy).
    ProviderError,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Allowed,
        Outcome::Rejected,
        Outcome::Shed,
        Outcome::ShadowRejected,
        Outcome::Exempt,
        Outcome::KeyError,
        Outcome::ProviderError,
    ];

    /// The label value: `allowed`, `rejected`, `shed`, `shadow_rejected`, `exempt`,
    /// `key_error`, `provider_error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Rejected => "rejected",
            Outcome::Shed => "shed",
            Outcome::ShadowRejected => "shadow_rejected",
            Outcome::Exempt => "exempt",
            Outcome::KeyError => "key_error",
            Outcome::ProviderError => "provider_error",
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short hash of a key for logs: 8 hex digits, the same for the same key within one
/// process and unrelated across processes (the seed is random), so a log line never gives
/// a key away, not even an IP address by trying all of them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(u32);

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The [`KeyFingerprint`] of `key`.
pub fn fingerprint(key: &str) -> KeyFingerprint {
    static SEED: LazyLock<foldhash::quality::RandomState> =
        LazyLock::new(foldhash::quality::RandomState::default);
    KeyFingerprint((SEED.hash_one(key) >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_short_stable_and_do_not_spell_the_key() {
        let a = fingerprint("203.0.113.7");
        assert_eq!(a, fingerprint("203.0.113.7"));
        assert_ne!(a, fingerprint("203.0.113.8"));
        let text = a.to_string();
        assert_eq!(text.len(), 8);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()), "{text}");
        assert!(!text.contains("203"));
        // Debug (what `?fingerprint` in a tracing event prints) is the same 8 digits.
        assert_eq!(format!("{a:?}"), text);
    }

    #[test]
    fn outcome_labels_are_the_documented_ones() {
        let labels: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            [
                "allowed",
                "rejected",
                "shed",
                "shadow_rejected",
                "exempt",
                "key_error",
                "provider_error"
            ]
        );
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(o.to_string(), labels[i], "Display is the label");
        }
    }
}
