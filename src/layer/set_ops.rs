//! Shadowed and exempted limits inside a set, and refunds of a set's units (counting by
//! outcome on a layer of several limits).
//!
//! A set whose limits are all enforcing and never exempt is one group, decided by the
//! provider's set machinery in one call (`set.rs`). A limit marked
//! [`shadow`](super::LayerLimit::shadow) or [`exempt`](super::LayerLimit::exempt) splits the
//! set into groups, each a provider set of its own: the enforcing limits without exemptions,
//! each enforcing limit with exemptions on its own, the shadow limits without exemptions, and
//! each shadow limit with exemptions on its own. A request is then decided so:
//!
//! 1. Every group whose limit exempts the request is left out: it spends nothing and counts
//!    `exempt` for its limit's policy.
//! 2. The enforcing groups decide in turn. When one refuses, those that admitted give their
//!    units back (a refund, as counting by outcome does), and the request is refused: it
//!    counts in no limit, shadow limits included.
//! 3. Once every enforcing group admitted, the shadow groups decide in turn, as a set of
//!    their own: when one refuses, those that admitted give their units back, and each
//!    refusing shadow limit counts `shadow_rejected` for its policy and logs a `debug`
//!    event (its policy, the key's fingerprint, `shadow = true`). The request goes on.
//!
//! Between a group's admission and its refund its units are held: a concurrent request may
//! then be refused for units that go back a moment later. So the split set is never looser
//! than the whole set decided at once, only, for that moment, a little stricter.

use std::future::Future;
use std::sync::Arc;

use super::exempt::Exemptions;
use super::extract::{Key, RequestHead};
use super::set::SetBackend;
use crate::Error;
use crate::local::Reservation;
use crate::observe::{self, Outcome as Counted};
use crate::policy::{MAX_LIMITS, SetDecision};

/// Every limit (or group) of a set, as a mask.
pub(crate) const ALL: u16 = u16::MAX;

/// Limits of a set decided by one provider call.
pub(crate) struct Group {
    pub(super) backend: SetBackend,
    /// The limits' positions in the layer's set.
    pub(super) members: Box<[usize]>,
    /// Per member: the index of its key among the extractors' keys.
    pub(super) key_idx: Box<[usize]>,
    /// Per member: its policy name.
    pub(super) names: Box<[Arc<str>]>,
    pub(super) shadow: bool,
    /// The member's exemptions (a group with exemptions has one member).
    pub(super) exempt: Option<Exemptions>,
    /// Per member: its own `shadow_rejected` and `exempt` counts (feature `metrics`, and
    /// only for shadowed or exempted limits).
    #[cfg(feature = "metrics")]
    pub(super) counters: Box<[Option<observe::LimitCounters>]>,
}

impl Group {
    /// The mask of the group's positions in the set.
    pub(super) fn positions(&self) -> u16 {
        self.members.iter().fold(0, |m, p| m | (1 << p))
    }

    /// Member `j`'s key.
    pub(super) fn key<'k>(&self, keys: &'k [Key], j: usize) -> &'k Key {
        &keys[self.key_idx[j]]
    }

    /// Whether this group's limit exempts the request (`keys`: the extractors' keys).
    pub(super) fn exempts(&self, head: &RequestHead<'_>, keys: &[Key]) -> bool {
        self.exempt
            .as_ref()
            .is_some_and(|e| e.exempts_request(head) || e.exempts_key(self.key(keys, 0)))
    }

    /// This call's quota counts for the group's members.
    fn counts(&self, counts: Option<&[f64; MAX_LIMITS]>) -> Option<[f64; MAX_LIMITS]> {
        counts.map(|c| {
            let mut mine = [0.0; MAX_LIMITS];
            for (j, p) in self.members.iter().enumerate() {
                mine[j] = c[*p];
            }
            mine
        })
    }

    /// Counts `outcome` for member `j`'s own policy.
    pub(super) fn count(&self, j: usize, outcome: Counted) {
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.counters[j] {
            c.count(outcome);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (j, outcome);
    }

    /// Decides the group now (local, hybrid: from memory).
    pub(super) fn decide_sync(
        &self,
        keys: &[Key],
        counts: Option<&[f64; MAX_LIMITS]>,
        cost: u64,
    ) -> Result<SetDecision, Error> {
        let n = self.members.len();
        let counts = self.counts(counts);
        match &self.backend {
            SetBackend::Local(policy) => {
                let mut strs = [""; MAX_LIMITS];
                for (j, s) in strs.iter_mut().enumerate().take(n) {
                    *s = self.key(keys, j).as_str();
                }
                match &counts {
                    Some(c) => policy.inc_with(&strs[..n], &c[..n], cost),
                    None => policy.inc_each(&strs[..n], cost),
                }
            }
            #[cfg(feature = "redis-tokio")]
            SetBackend::Hybrid(policy) => {
                let redis_keys = self.redis_keys(keys)?;
                let refs: Vec<_> = redis_keys.iter().collect();
                match &counts {
                    Some(c) => policy.inc_with(&refs, &c[..n], cost),
                    None => policy.inc_each(&refs, cost),
                }
            }
            #[cfg(feature = "redis-tokio")]
            SetBackend::Redis(_) => unreachable!("a Redis group is decided by `decide_async`"),
        }
    }

    /// Decides the group over the network (Redis).
    #[cfg(feature = "redis-tokio")]
    pub(super) async fn decide_async(
        &self,
        keys: &[Key],
        counts: Option<&[f64; MAX_LIMITS]>,
        cost: u64,
    ) -> Result<SetDecision, Error> {
        let SetBackend::Redis(policy) = &self.backend else {
            return self.decide_sync(keys, counts, cost);
        };
        let n = self.members.len();
        let counts = self.counts(counts);
        let redis_keys = self.redis_keys(keys)?;
        let refs: Vec<_> = redis_keys.iter().collect();
        match &counts {
            Some(c) => policy.inc_with(&refs, &c[..n], cost).await,
            None => policy.inc_each(&refs, cost).await,
        }
    }

    #[cfg(feature = "redis-tokio")]
    fn redis_keys(&self, keys: &[Key]) -> Result<Vec<crate::redis::RedisKey>, Error> {
        (0..self.members.len())
            .map(|j| super::provider::redis_key(self.key(keys, j)))
            .collect()
    }

    /// The clock this group's reservations are read on.
    pub(super) fn now_ms(&self) -> u64 {
        match &self.backend {
            SetBackend::Local(policy) => policy.now_ms(),
            #[cfg(feature = "redis-tokio")]
            SetBackend::Hybrid(policy) => policy.reservation_ms(),
            #[cfg(feature = "redis-tokio")]
            SetBackend::Redis(policy) => policy.reservation_ms(),
        }
    }

    /// Gives back the `cost` units this group counted at `at`: in place on the local
    /// provider, on a spawned task on the networked ones (a failure leaves them counted,
    /// which is only stricter, and is logged at `debug`).
    pub(super) fn refund(&self, keys: &[Key], cost: u64, at: Reservation) {
        let n = self.members.len();
        match &self.backend {
            SetBackend::Local(policy) => {
                let mut strs = [""; MAX_LIMITS];
                for (j, s) in strs.iter_mut().enumerate().take(n) {
                    *s = self.key(keys, j).as_str();
                }
                let _ = policy.refund_masked(&strs[..n], cost, at, ALL);
            }
            #[cfg(feature = "redis-tokio")]
            SetBackend::Hybrid(_) | SetBackend::Redis(_) => {
                let Ok(redis_keys) = self.redis_keys(keys) else {
                    return;
                };
                let backend = self.backend.clone();
                tokio::spawn(async move {
                    let refs: Vec<_> = redis_keys.iter().collect();
                    let result = match &backend {
                        SetBackend::Hybrid(p) => p.refund_masked(&refs, cost, at, ALL).await,
                        SetBackend::Redis(p) => {
                            p.refund_masked(
                                &refs,
                                cost,
                                crate::redis::SetRefundSpan::Reserved(at),
                                ALL,
                            )
                            .await
                        }
                        SetBackend::Local(_) => Ok(0),
                    };
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "sluicegate: a set refund failed; the units stay counted");
                    }
                });
            }
        }
    }
}

/// What a set decided for one request, in the layer's positions.
#[derive(Debug, Clone)]
pub(crate) struct SetDone {
    /// The enforcing decision; positions outside `visible` were not decided.
    pub(crate) decision: SetDecision,
    /// The positions that decided the request (enforcing, not exempt): the ones the fields
    /// list.
    pub(crate) visible: u16,
    /// The groups that counted the request (what a refund gives back).
    pub(crate) counted: u16,
    /// The reservation clock before the decision (counting by outcome).
    pub(crate) before_ms: u64,
    /// The request's cost (what a refund gives back).
    pub(crate) cost: u64,
}

/// Decides a split set: the enforcing groups, then the shadow ones (see the module docs).
/// `exempt` is the mask of the groups the request is exempt from. `decide` is the group's
/// provider call; for the local and hybrid providers it is ready at once, so the whole
/// future is.
pub(super) async fn run_groups<'a, F, Fut>(
    groups: &'a [Group],
    len: usize,
    keys: &'a [Key],
    exempt: u16,
    cost: u64,
    decide: F,
) -> Result<SetDone, Error>
where
    F: Fn(&'a Group) -> Fut,
    Fut: Future<Output = Result<SetDecision, Error>>,
{
    let mut done = SetDone {
        decision: SetDecision::empty(len),
        visible: 0,
        counted: 0,
        before_ms: groups.first().map_or(0, Group::now_ms),
        cost,
    };
    let mut before = [0u64; MAX_LIMITS];
    for shadow in [false, true] {
        let mut admitted: u16 = 0;
        let pass = groups
            .iter()
            .enumerate()
            .filter(|(g, group)| group.shadow == shadow && exempt & (1 << g) == 0);
        for (g, group) in pass {
            before[g] = group.now_ms();
            let result = decide(group).await;
            let d = match result {
                Ok(d) => d,
                Err(err) if shadow => {
                    // A shadow limit never refuses, not even when its provider fails.
                    tracing::debug!(error = %err, "sluicegate: a shadow limit could not decide");
                    give_back(groups, admitted, keys, cost, &before);
                    admitted = 0;
                    break;
                }
                Err(err) => {
                    give_back(groups, done.counted | admitted, keys, cost, &before);
                    return Err(err);
                }
            };
            if !shadow {
                for (j, p) in group.members.iter().enumerate() {
                    done.decision.limits[*p] = d.limits()[j];
                }
                done.visible |= group.positions();
            }
            if d.is_allowed() {
                admitted |= 1 << g;
                continue;
            }
            give_back(groups, admitted, keys, cost, &before);
            if !shadow {
                // The limits that gave their units back show them as left.
                for (_, group) in groups
                    .iter()
                    .enumerate()
                    .filter(|(g, _)| admitted & (1 << g) != 0)
                {
                    for p in group.members.iter() {
                        let status = &mut done.decision.limits[*p];
                        status.remaining = status.remaining.saturating_add(cost);
                    }
                }
            }
            admitted = 0;
            if !shadow {
                done.decision.outcome = d.outcome();
                done.decision.retry_after_ms = d.retry_after_ms();
                return Ok(done);
            }
            for j in d.refused() {
                group.count(j, Counted::ShadowRejected);
                let outcome = match d.outcome() {
                    crate::policy::Outcome::Shed => Counted::Shed,
                    _ => Counted::Rejected,
                };
                tracing::debug!(
                    policy = &*group.names[j],
                    key = %observe::fingerprint(group.key(keys, j).as_str()),
                    would_be = %outcome,
                    shadow = true,
                    "sluicegate: request would have been refused (shadow limit)"
                );
            }
            break;
        }
        done.counted |= admitted;
    }
    Ok(done)
}

/// Refunds the groups of `mask`, each at its own reservation.
fn give_back(groups: &[Group], mask: u16, keys: &[Key], cost: u64, before: &[u64; MAX_LIMITS]) {
    for (g, group) in groups.iter().enumerate() {
        if mask & (1 << g) != 0 {
            let at = Reservation {
                before_ms: before[g],
                after_ms: group.now_ms(),
            };
            group.refund(keys, cost, at);
        }
    }
}

/// A set layer's units held for counting by outcome: the groups that counted them.
pub(crate) struct SetUnits {
    pub(crate) groups: Arc<[Group]>,
    pub(crate) keys: Box<[Key]>,
    pub(crate) counted: u16,
}

impl std::fmt::Debug for SetUnits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetUnits")
            .field("counted", &self.counted)
            .finish_non_exhaustive()
    }
}

impl SetUnits {
    /// Gives the request's `cost` units back in every group that counted it, reserved from
    /// `before_ms` until now.
    pub(crate) fn refund(&self, cost: u64, before_ms: u64) {
        for (g, group) in self.groups.iter().enumerate() {
            if self.counted & (1 << g) != 0 {
                let at = Reservation {
                    before_ms,
                    after_ms: group.now_ms(),
                };
                group.refund(&self.keys, cost, at);
            }
        }
    }
}
