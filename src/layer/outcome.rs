//! Counting by outcome: a layer that counts only the responses a predicate selects (a
//! login limit counting failed attempts) reserves the request's units before the handler
//! and gives them back ([`Reservation`] and each provider's refund) when the response is not
//! selected. The limit still holds under any concurrency: every request in flight holds
//! its units, so no more selected responses are admitted in a window than its capacity.
//! A set of limits works the same way, limit by limit: a request holds its units in every
//! limit that counted it and gives them back in all of them (`set_ops.rs`, and each
//! provider's set refund: `local/policy_refund.rs`, `redis/policy_refund.rs`,
//! `hybrid/policy_refund.rs`).
//! An inner service's error, or a request abandoned before its response, keeps its units.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use super::extract::Key;
use crate::local::Reservation;
use crate::{RateLimiter, Strategy};

/// Which responses count: `true` keeps the request's units, `false` gives them back.
pub type CountIfFn = dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync;

/// Who gives the units back, and on which clock a reservation is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refunder {
    Local(Strategy),
    #[cfg(feature = "redis-tokio")]
    Hybrid(Strategy),
    #[cfg(feature = "redis-tokio")]
    Redis(Strategy),
    /// A set of limits: each group of the set reads its own provider's clock.
    Set,
}

/// A layer's counting by outcome.
pub(crate) struct CountOutcomes {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) counts: Arc<CountIfFn>,
    pub(crate) refunder: Refunder,
}

impl std::fmt::Debug for CountOutcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountOutcomes")
            .field("refunder", &self.refunder)
            .finish_non_exhaustive()
    }
}

/// An admitted request's units, held until its response says whether they count.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) counting: Arc<CountOutcomes>,
    pub(crate) key: Key,
    pub(crate) cost: u64,
    /// The reservation clock just before the decision.
    pub(crate) before_ms: u64,
    /// A set layer's groups that counted the request (`None` on a one-rate layer).
    pub(crate) set: Option<super::set_ops::SetUnits>,
}

impl Refunder {
    /// The clock a reservation is read on: the limiter's (local), the server grid's
    /// (hybrid) or the Redis refunds' (Redis).
    pub(crate) fn now_ms(&self, rl: &RateLimiter) -> u64 {
        match self {
            Refunder::Local(_) => rl.local().now_ms(),
            #[cfg(feature = "redis-tokio")]
            Refunder::Hybrid(_) => rl.hybrid().reservation_ms(),
            #[cfg(feature = "redis-tokio")]
            Refunder::Redis(_) => rl.redis().reservation_ms(),
            Refunder::Set => 0,
        }
    }
}

impl CountOutcomes {
    /// The response is in: keeps the units if it counts, gives them back otherwise (in place
    /// for the local provider; on a spawned task for the networked ones).
    pub(crate) fn settle(pending: Pending, status: StatusCode, headers: &HeaderMap) {
        let this = &*pending.counting;
        let rl = &this.limiter;
        if (this.counts)(status, headers) {
            return;
        }
        if let Some(set) = &pending.set {
            set.refund(pending.cost, pending.before_ms);
            return;
        }
        let at = Reservation {
            before_ms: pending.before_ms,
            after_ms: this.refunder.now_ms(rl),
        };
        let Pending { key, cost, .. } = pending;
        match this.refunder {
            Refunder::Set => {}
            Refunder::Local(Strategy::Absolute) => {
                rl.local().absolute().refund(key.as_str(), cost, at);
            }
            Refunder::Local(Strategy::Suppressed) => {
                rl.local().suppressed().refund(key.as_str(), cost, at);
            }
            #[cfg(feature = "redis-tokio")]
            Refunder::Hybrid(strategy) | Refunder::Redis(strategy) => {
                let Ok(key) = super::provider::redis_key(&key) else {
                    return;
                };
                let (rl, hybrid) = (rl.clone(), matches!(this.refunder, Refunder::Hybrid(_)));
                tokio::spawn(async move {
                    let result = match (hybrid, strategy) {
                        (true, Strategy::Absolute) => {
                            rl.hybrid().absolute().refund(&key, cost, at).await
                        }
                        (true, Strategy::Suppressed) => {
                            rl.hybrid().suppressed().refund(&key, cost, at).await
                        }
                        (false, Strategy::Absolute) => {
                            rl.redis().absolute().refund(&key, cost, at).await
                        }
                        (false, Strategy::Suppressed) => {
                            rl.redis().suppressed().refund(&key, cost, at).await
                        }
                    };
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "sluicegate: a refund failed; the units stay counted");
                    }
                });
            }
        }
    }
}
