//! The `metrics` facade (feature `metrics`): a layer's handles, registered once, and the
//! limiter-wide figures [`publish`] reads.

use metrics::{Counter, Histogram, counter, gauge, histogram};

use super::{
    DECISION_SECONDS, HYBRID_FLUSH_ERRORS_TOTAL, HYBRID_FLUSHES_TOTAL, HYBRID_REFRESHES_TOTAL,
    HYBRID_UNITS_DROPPED_TOTAL, KEYS_HELD, NEAR_LIMIT_TOTAL, Outcome, REQUESTS_TOTAL,
};
use crate::RateLimiter;

/// One policy's handles: an increment is an atomic add on the recorder's counter, with no
/// label lookup on the request path.
#[derive(Debug)]
pub(crate) struct LayerMetrics {
    outcomes: [Counter; 7],
    near_limit: Counter,
    /// Registered only for the Redis provider, the one that decides over the network: a
    /// local or hybrid layer (decided in memory) never records a latency, and a registered
    /// histogram with no samples is noise in every scrape.
    latency: Option<Histogram>,
}

impl LayerMetrics {
    /// Registers the policy's counters with the recorder installed now. `provider` labels
    /// the latency histogram, which only a Redis layer registers.
    pub(crate) fn new(policy: &str, provider: &'static str) -> Self {
        let outcome = |o: Outcome| counter!(REQUESTS_TOTAL, "policy" => policy.to_owned(), "outcome" => o.as_str());
        LayerMetrics {
            outcomes: Outcome::ALL.map(outcome),
            near_limit: counter!(NEAR_LIMIT_TOTAL, "policy" => policy.to_owned()),
            latency: (provider == "redis").then(
                || histogram!(DECISION_SECONDS, "policy" => policy.to_owned(), "provider" => provider),
            ),
        }
    }

    #[inline]
    pub(crate) fn outcome(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].increment(1);
    }

    #[inline]
    pub(crate) fn near_limit(&self) {
        self.near_limit.increment(1);
    }

    /// The latency histogram, for a decision future to record into (`None` but on a Redis
    /// layer).
    pub(crate) fn latency_handle(&self) -> Option<Histogram> {
        self.latency.clone()
    }
}

/// The counts one limit of a set keeps of its own (its policy label is the limit's name):
/// the limits shadowed or exempted on their own. Only these two outcomes are registered
/// for it, so a scrape shows no idle series for the other ones.
#[derive(Debug, Clone)]
pub(crate) struct LimitCounters {
    shadow_rejected: Counter,
    exempt: Counter,
}

impl LimitCounters {
    /// Registers limit `name`'s `shadow_rejected` and `exempt` counters.
    pub(crate) fn new(name: &str) -> Self {
        let outcome = |o: Outcome| counter!(REQUESTS_TOTAL, "policy" => name.to_owned(), "outcome" => o.as_str());
        LimitCounters {
            shadow_rejected: outcome(Outcome::ShadowRejected),
            exempt: outcome(Outcome::Exempt),
        }
    }

    /// Counts `outcome` (`ShadowRejected` or `Exempt`; any other is not kept per limit).
    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::ShadowRejected => self.shadow_rejected.increment(1),
            Outcome::Exempt => self.exempt.increment(1),
            _ => {}
        }
    }
}

/// Reads the limiter-wide figures into the installed recorder: [`KEYS_HELD`] per provider
/// and (feature `redis-tokio`) the hybrid committer's counters. Cheap (one pass over the
/// shards' lengths): call it before rendering, or every few seconds.
pub fn publish(limiter: &RateLimiter) {
    let local = limiter.local().absolute().key_count() + limiter.local().suppressed().key_count();
    gauge!(KEYS_HELD, "provider" => "local").set(local as f64);
    #[cfg(feature = "redis-tokio")]
    if limiter.redis().is_configured() {
        let hybrid = limiter.hybrid();
        gauge!(KEYS_HELD, "provider" => "hybrid").set(hybrid.key_count() as f64);
        let stats = hybrid.stats();
        counter!(HYBRID_FLUSHES_TOTAL).absolute(stats.flushes);
        counter!(HYBRID_FLUSH_ERRORS_TOTAL).absolute(stats.flush_errors);
        counter!(HYBRID_REFRESHES_TOTAL).absolute(stats.refreshes);
        counter!(HYBRID_UNITS_DROPPED_TOTAL).absolute(stats.units_dropped);
    }
    #[cfg(not(feature = "redis-tokio"))]
    let _ = (
        HYBRID_FLUSHES_TOTAL,
        HYBRID_FLUSH_ERRORS_TOTAL,
        HYBRID_REFRESHES_TOTAL,
        HYBRID_UNITS_DROPPED_TOTAL,
    );
}
