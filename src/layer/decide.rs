//! [`DecisionEngine`]: the per-request decision, from the request head to a [`Verdict`].
//!
//! The path of one request: the extractor reads the key, the rate and cost resolve, the
//! provider decides (in place for the local one; a networked decision is polled once and
//! only one still on its way becomes [`Verdict::Awaiting`]), and the decision becomes the
//! fields of an admitted response or the layer's own answer ([`fields`](super::fields)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Response, StatusCode};

use super::builder::{CostSource, KeyErrorPolicy, ProviderErrorPolicy, RateSource};
use super::extract::{
    Ipv4Text, Key, KeyError, KeyExtractor, PeerIp, RequestHead, ipv4_ascii, peer_addr,
};
use super::fields::{AdmittedHeaders, Left};
use super::headers;
use super::headers::Prebuilt;
use super::ops::Standing;
use super::provider::{self, Backend, DecisionFuture};
use super::response::{Rejection, RejectionBody};
use super::set::SetEngine;
use crate::Strategy;
use crate::observe::Outcome;
use crate::{Error, RateLimit, RateLimitDecision, RateLimiter};
use std::net::SocketAddr;

/// Everything a service needs to decide, behind the one `Arc` a clone copies.
pub(crate) struct DecisionEngine {
    pub(super) limiter: Arc<RateLimiter>,
    pub(super) extractor: Arc<dyn KeyExtractor>,
    /// The extractor when it is [`PeerIp`], the common case: no virtual call.
    pub(super) peer_ip: Option<PeerIp>,
    pub(super) rate: RateSource,
    pub(super) cost: CostSource,
    pub(super) strategy: Strategy,
    pub(super) backend: Backend,
    pub(super) on_key_error: KeyErrorPolicy,
    pub(super) on_provider_error: ProviderErrorPolicy,
    pub(super) headers_on_allowed: bool,
    pub(super) factor_on_allowed: bool,
    pub(super) body: RejectionBody,
    pub(super) prebuilt: Prebuilt,
    /// Several limits: the set, decided in place of the one rate.
    pub(super) set: Option<Box<SetEngine>>,
    /// The longest key taken, in bytes.
    pub(super) max_key_len: usize,
    /// Whether [`check_ipv4`](Self::check_ipv4) may decide: the extractor is [`PeerIp`],
    /// the rate fixed, the provider local, one rate (no set), no fields on admitted
    /// responses, and nothing in `ops` needs more than the verdict and the usage.
    pub(super) fast_ipv4: bool,
    /// The usage after an admitted request (at the fixed rate) from which it counts as
    /// near the limit (`sluicegate_near_limit_total`): at least
    /// [`NEAR_LIMIT_SHARE`](crate::observe::NEAR_LIMIT_SHARE) of the quota.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) near_limit_at: u64,
    /// The default configuration's path, when it applies (see [`CountedIpv4`]).
    pub(super) counted_ipv4: Option<CountedIpv4>,
    pub(crate) provider_errors: AtomicU64,
    /// Metrics, logs, shadow mode, exemptions, counting by outcome (`ops.rs`).
    pub(super) ops: super::ops::Ops,
}

impl std::fmt::Debug for DecisionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionEngine")
            .field("strategy", &self.strategy)
            .field("backend", &self.backend)
            .field("on_key_error", &self.on_key_error)
            .field("on_provider_error", &self.on_provider_error)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The outcome of the layer's checks for one request.
pub(crate) enum Verdict {
    /// Call the inner service, then add these headers.
    Pass(AdmittedHeaders),
    /// Answer with this response (boxed: it is large, and the allowed path's future
    /// should not be).
    Reject(Box<Response<Bytes>>),
    /// Wait for a networked provider, then [`Pending::poll`] (boxed: the local path returns
    /// a verdict on every request, and it should be two words, not the pending state's
    /// hundred bytes).
    Awaiting(Box<Pending>),
}

/// What the default configuration's path needs, fixed at build time: the extractor is
/// [`PeerIp`], the rate and cost fixed (their capacity checked), the provider local, one
/// rate, no fields on admitted responses, nothing in `ops` but the metrics, and the
/// metrics on (the near-limit count reads the usage after the call). `check` tests this
/// one field and reads the rest from it, with no match on the rate, cost or backend.
#[derive(Debug, Clone, Copy)]
pub(super) struct CountedIpv4 {
    pub(super) strategy: Strategy,
    pub(super) rate: RateLimit,
    pub(super) cost: u64,
    pub(super) cap: f64,
}

/// A networked decision on its way, and what finishing it needs.
pub(crate) enum Pending {
    /// The one-rate layer.
    One(DecisionFuture, AwaitedRequest),
    /// A set; the extractors' keys.
    #[cfg(feature = "redis-tokio")]
    Set(
        super::set::SetFuture,
        Box<[Key]>,
        Option<[f64; crate::policy::MAX_LIMITS]>,
    ),
}

impl Pending {
    /// Polls the decision; once it is in, the verdict.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, engine: &DecisionEngine) -> Poll<Verdict> {
        match self {
            Pending::One(decision, awaited) => {
                let result = std::task::ready!(decision.as_mut().poll(cx));
                Poll::Ready(engine.finish(result, awaited))
            }
            #[cfg(feature = "redis-tokio")]
            Pending::Set(decision, keys, counts) => {
                let result = std::task::ready!(decision.as_mut().poll(cx));
                Poll::Ready(engine.finish_set(result, keys, *counts))
            }
        }
    }
}

/// The request a networked decision is awaited for: what the finishing step needs.
pub(crate) struct AwaitedRequest {
    key: Key,
    rate: RateLimit,
    cost: u64,
    /// The reservation clock before the decision (counting by outcome).
    before_ms: u64,
}

impl DecisionEngine {
    /// Decides one request from its head: the default configuration's path inlined into
    /// the service's `call` (its frame and the head's pointers then the caller's), anything
    /// else out of line.
    #[inline(always)]
    pub(crate) fn check(&self, head: &RequestHead<'_>) -> Verdict {
        match &self.counted_ipv4 {
            Some(counted) => self.check_counted_ipv4(counted, head),
            None => self.check_general(head),
        }
    }

    /// Every path but [`check_counted_ipv4`](Self::check_counted_ipv4)'s (which comes
    /// here for an IPv6 peer).
    #[inline(never)]
    fn check_general(&self, head: &RequestHead<'_>) -> Verdict {
        if self.fast_ipv4 && self.counted_ipv4.is_none() {
            if let Some(verdict) = self.check_ipv4(head) {
                return verdict;
            }
        }
        if self.ops.exempts_request(head) {
            return self.ops.exempt();
        }
        if let Some(set) = &self.set {
            return self.check_set(set, head);
        }
        let key = match &self.peer_ip {
            Some(peer_ip) => peer_ip.extract(head),
            None => self.extractor.extract(head),
        };
        let key = match key {
            Ok(key) => key,
            Err(err) => return self.key_failure(&err),
        };
        if let Err(verdict) = self.check_key_len(&key) {
            return verdict;
        }
        if self.ops.exempts_key(&key) {
            return self.ops.exempt();
        }
        let rate = match &self.rate {
            RateSource::Fixed(r) => *r,
            RateSource::Resolver(f) => f(&key, head),
        };
        let cost = self.resolve_cost(head);
        let before_ms = match &self.ops.counting {
            None => 0,
            Some(c) => c.refunder.now_ms(&self.limiter),
        };
        match &self.backend {
            // With the admitted fields on (or the near-limit count, or the handler's
            // decision), the usage after the call comes from the same lookup: no second
            // one for `RateLimit: r=`.
            Backend::Local(strategy) if self.headers_on_allowed || self.ops.wants_usage => {
                match provider::local_inc_with_used(&self.limiter, *strategy, &key, &rate, cost) {
                    Ok((decision, used)) => {
                        let left = self.left_after(rate, used);
                        self.verdict(decision, &key, rate, Some(left), cost, before_ms)
                    }
                    Err(err) => self.misconfigured(&err),
                }
            }
            Backend::Local(strategy) => {
                match provider::local_inc(&self.limiter, *strategy, &key, &rate, cost) {
                    Ok(decision) => self.verdict(decision, &key, rate, None, cost, before_ms),
                    Err(err) => self.misconfigured(&err),
                }
            }
            #[cfg(feature = "redis-tokio")]
            Backend::Hybrid(strategy) => {
                let result = provider::hybrid_inc(
                    &self.limiter,
                    *strategy,
                    &key,
                    &rate,
                    cost,
                    self.headers_on_allowed || self.ops.wants_usage,
                );
                self.finish(
                    result,
                    &AwaitedRequest {
                        key,
                        rate,
                        cost,
                        before_ms,
                    },
                )
            }
            Backend::Async(p) => {
                let mut decision = self.ops.timed(p.inc(&key, rate, cost));
                let awaited = AwaitedRequest {
                    key,
                    rate,
                    cost,
                    before_ms,
                };
                // Poll once in place: only a decision that is really on its way (not one
                // refused before any I/O) takes the boxed-state path.
                let mut cx = Context::from_waker(Waker::noop());
                match decision.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => self.finish(result, &awaited),
                    Poll::Pending => Verdict::Awaiting(Box::new(Pending::One(decision, awaited))),
                }
            }
        }
    }

    /// The default configuration's request ([`CountedIpv4`]), decided without building a
    /// [`Key`]: the IPv4 address written as ASCII text on the stack (an IPv4-mapped IPv6
    /// peer is the IPv4 address it carries, as `normalize_ip`), the store keyed with its
    /// bytes, the usage after the call read in the same lookup for the near-limit count.
    /// Anything but an admission goes out of line; an IPv6 peer takes the general path.
    /// Always inlined (through [`check`](Self::check), into the service's `call`): one
    /// frame, and the head's fields read from the request in place.
    #[inline(always)]
    fn check_counted_ipv4(&self, counted: &CountedIpv4, head: &RequestHead<'_>) -> Verdict {
        let v4 = match peer_addr(head.extensions) {
            Ok(SocketAddr::V4(addr)) => *addr.ip(),
            Ok(SocketAddr::V6(addr)) => match addr.ip().to_ipv4_mapped() {
                Some(v4) => v4,
                None => return self.check_general(head),
            },
            Err(err) => return self.key_failure(&err),
        };
        let mut buf = Ipv4Text::new();
        let len = ipv4_ascii(v4, &mut buf);
        if len > self.max_key_len {
            return self.key_too_long(&Key::new(buf.text(len)));
        }
        match provider::local_inc_counted(
            &self.limiter,
            counted.strategy,
            buf.bytes(len),
            counted.rate.get(),
            counted.cost,
            counted.cap,
        ) {
            Ok((RateLimitDecision::Allowed, used)) => {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.ops.metrics {
                    self.count_admitted(metrics, used);
                }
                #[cfg(not(feature = "metrics"))]
                let _ = used;
                Verdict::Pass(AdmittedHeaders::none())
            }
            other => self.counted_ipv4_other(counted, other, buf.text(len)),
        }
    }

    /// [`check_counted_ipv4`](Self::check_counted_ipv4)'s answers but an admission: a
    /// refusal, an admission over capacity (the suppressed strategy), a full key budget.
    #[cold]
    #[inline(never)]
    fn counted_ipv4_other(
        &self,
        counted: &CountedIpv4,
        result: Result<(RateLimitDecision, u64), crate::local::store::Full>,
        key: &str,
    ) -> Verdict {
        match result {
            Ok((decision, used)) => {
                self.verdict_after(decision, key, counted.rate, used, counted.cost)
            }
            Err(full) => self.misconfigured(&Error::from(full)),
        }
    }

    /// An admission whose lookup also read the usage after it: counted `allowed`, and
    /// near the limit from that usage.
    #[cfg(feature = "metrics")]
    #[inline(always)]
    fn count_admitted(&self, metrics: &crate::observe::LayerMetrics, used: u64) {
        metrics.outcome(Outcome::Allowed);
        if used >= self.near_limit_at {
            metrics.near_limit();
        }
    }

    /// The verdict on a local decision other than a plain admission, with the usage after
    /// it (what is left for `RateLimit`).
    fn verdict_after(
        &self,
        decision: RateLimitDecision,
        key: &str,
        rate: RateLimit,
        used: u64,
        cost: u64,
    ) -> Verdict {
        let left = self.left_after(rate, used);
        self.verdict(decision, &Key::new(key), rate, Some(left), cost, 0)
    }

    /// An IPv4 peer keyed by [`PeerIp`], decided without building a [`Key`], for what
    /// [`check_counted_ipv4`](Self::check_counted_ipv4) does not take: a fixed rate, the
    /// local provider, no fields on admitted responses, no exemptions, no counting by
    /// outcome, no decision extension ([`fast_ipv4`](Self::fast_ipv4) says so at build
    /// time), and a cost resolver, metrics off, or a capacity the build-time check refused. The address
    /// is written as ASCII text on the stack; a `Key` is made only for a refusal. With
    /// metrics on, the decision's lookup also reads the usage after it, for the near-limit
    /// count. `None`: not an IPv4 peer.
    #[inline]
    fn check_ipv4(&self, head: &RequestHead<'_>) -> Option<Verdict> {
        let (RateSource::Fixed(rate), Backend::Local(strategy)) = (&self.rate, &self.backend)
        else {
            return None;
        };
        // An IPv4-mapped IPv6 peer is the IPv4 address it carries (as `normalize_ip`).
        let v4 = match peer_addr(head.extensions) {
            Ok(SocketAddr::V4(addr)) => *addr.ip(),
            Ok(SocketAddr::V6(addr)) => addr.ip().to_ipv4_mapped()?,
            Err(err) => return Some(self.key_failure(&err)),
        };
        let mut buf = Ipv4Text::new();
        let len = ipv4_ascii(v4, &mut buf);
        // The text as `&str`, off the common path (a held key is looked up by its bytes).
        let text = || buf.text(len);
        if len > self.max_key_len {
            return Some(self.key_too_long(&Key::new(text())));
        }
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.ops.metrics {
            // A cost resolver, or a capacity the build-time check refused (with a fixed
            // cost and a capacity that fits, `check_counted_ipv4` decides instead).
            let cost = self.resolve_cost(head);
            let result =
                provider::local_inc_str_with_used(&self.limiter, *strategy, text(), rate, cost);
            return Some(match result {
                Ok((RateLimitDecision::Allowed, used)) => {
                    self.count_admitted(metrics, used);
                    Verdict::Pass(AdmittedHeaders::none())
                }
                Ok((decision, used)) => self.verdict_after(decision, text(), *rate, used, cost),
                Err(err) => self.misconfigured(&err),
            });
        }
        let cost = self.resolve_cost(head);
        let key = text();
        Some(
            match provider::local_inc_str(&self.limiter, *strategy, key, rate, cost) {
                Ok(RateLimitDecision::Allowed) => Verdict::Pass(AdmittedHeaders::none()),
                Ok(decision) => self.verdict(decision, &Key::new(key), *rate, None, cost, 0),
                Err(err) => self.misconfigured(&err),
            },
        )
    }

    /// What is left of the key's quota at `rate` once `used` units count: the local
    /// store reports the usage after the call, so `t` is the window, the longest until
    /// all of it has expired.
    #[inline]
    fn left_after(&self, rate: RateLimit, used: u64) -> Left {
        let window_s = self.prebuilt.window_s;
        Left {
            remaining: headers::quota(rate.get(), window_s).saturating_sub(used),
            reset_s: window_s,
        }
    }

    /// The request's cost (at least 1).
    #[inline]
    pub(super) fn resolve_cost(&self, head: &RequestHead<'_>) -> u64 {
        match &self.cost {
            CostSource::Fixed(c) => *c,
            CostSource::Resolver(f) => f(head).max(1),
        }
    }

    /// Refuses a key over the length cap before it reaches a store.
    #[inline]
    pub(super) fn check_key_len(&self, key: &Key) -> Result<(), Verdict> {
        if key.as_str().len() <= self.max_key_len {
            return Ok(());
        }
        Err(self.key_too_long(key))
    }

    #[cold]
    pub(super) fn key_too_long(&self, key: &Key) -> Verdict {
        self.ops.count(Outcome::KeyError);
        let err = KeyError::TooLong {
            len: key.as_str().len(),
            max: self.max_key_len,
        };
        tracing::debug!(error = %err, "sluicegate: rate-limit key refused");
        Verdict::Reject(Box::new(self.body.build(&Rejection::KeyUnavailable {
            status: err.status(),
            error: &err,
        })))
    }

    /// Turns a networked provider's answer into a verdict.
    pub(crate) fn finish(
        &self,
        result: Result<(RateLimitDecision, Option<Left>), Error>,
        awaited: &AwaitedRequest,
    ) -> Verdict {
        match result {
            Ok((decision, left)) => self.verdict(
                decision,
                &awaited.key,
                awaited.rate,
                left,
                awaited.cost,
                awaited.before_ms,
            ),
            Err(err) => self.failed(err),
        }
    }

    /// A networked provider's error: a misconfigured rate or cost, a key Redis cannot
    /// store, or the provider failing (the provider-error policy).
    pub(super) fn failed(&self, err: Error) -> Verdict {
        match err {
            err @ (Error::CapacityBelowOne { .. }
            | Error::CapacityAboveMax { .. }
            | Error::CountAboveCapacity { .. }) => self.misconfigured(&err),
            Error::InvalidKey { key, reason } => self.key_failure(&KeyError::custom(
                StatusCode::BAD_REQUEST,
                format!("rate-limit key {key:?} cannot be stored in Redis: {reason}"),
            )),
            err => {
                self.provider_errors.fetch_add(1, Ordering::Relaxed);
                self.ops
                    .provider_failed(&self.limiter, &err, &self.on_provider_error);
                match self.on_provider_error {
                    ProviderErrorPolicy::FailOpen => Verdict::Pass(AdmittedHeaders::none()),
                    ProviderErrorPolicy::FailClosed => Verdict::Reject(Box::new(
                        self.body
                            .build(&Rejection::ProviderUnavailable { error: &err }),
                    )),
                }
            }
        }
    }

    /// `left`: what the decision says is left of the key's quota, where it says;
    /// `cost` and `before_ms` for counting by outcome.
    #[inline]
    fn verdict(
        &self,
        decision: RateLimitDecision,
        key: &Key,
        rate: RateLimit,
        left: Option<Left>,
        cost: u64,
        before_ms: u64,
    ) -> Verdict {
        let quota = || super::headers::quota(rate.get(), self.prebuilt.window_s);
        match decision {
            RateLimitDecision::Allowed => {
                let fields = if self.headers_on_allowed {
                    self.admitted(rate, left, None)
                } else {
                    AdmittedHeaders::none()
                };
                self.admitted_outcome(
                    fields,
                    key,
                    Standing {
                        left: left.map(|l| l.remaining),
                        quota: Some(quota()),
                        factor: 0.0,
                    },
                    cost,
                    before_ms,
                )
            }
            RateLimitDecision::Suppressed {
                is_allowed: true,
                suppression_factor,
            } => {
                let fields = self.admitted(rate, left, Some(suppression_factor));
                self.admitted_outcome(
                    fields,
                    key,
                    Standing {
                        left: left.map(|l| l.remaining),
                        quota: Some(quota()),
                        factor: suppression_factor,
                    },
                    cost,
                    before_ms,
                )
            }
            RateLimitDecision::Rejected { retry_after_ms, .. } => self.refused_outcome(
                Outcome::Rejected,
                &self.prebuilt.name,
                key,
                Box::new(self.limited(key, rate, retry_after_ms)),
            ),
            RateLimitDecision::Suppressed {
                is_allowed: false,
                suppression_factor,
            } => self.refused_outcome(
                Outcome::Shed,
                &self.prebuilt.name,
                key,
                Box::new(self.shed(key, rate, suppression_factor)),
            ),
        }
    }

    /// Whether the rate is the one fixed at build time (its policy field is pre-built).
    pub(super) fn fixed_rate(&self) -> bool {
        matches!(self.rate, RateSource::Fixed(_))
    }

    #[cold]
    pub(super) fn key_failure(&self, err: &KeyError) -> Verdict {
        self.ops.count(Outcome::KeyError);
        let status = match self.on_key_error {
            KeyErrorPolicy::Allow => {
                tracing::debug!(error = %err, "sluicegate: no rate-limit key; request let through");
                return Verdict::Pass(AdmittedHeaders::none());
            }
            KeyErrorPolicy::Reject => err.status(),
            KeyErrorPolicy::RejectWith(status) => status,
        };
        if status.is_server_error() {
            tracing::error!(error = %err, "sluicegate: no rate-limit key");
        }
        Verdict::Reject(Box::new(
            self.body
                .build(&Rejection::KeyUnavailable { error: err, status }),
        ))
    }

    #[cold]
    pub(super) fn misconfigured(&self, err: &Error) -> Verdict {
        tracing::error!(error = %err, "sluicegate: resolved rate or cost does not fit the limiter");
        Verdict::Reject(Box::new(
            self.body.build(&Rejection::Misconfigured { error: err }),
        ))
    }
}
