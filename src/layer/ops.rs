//! What makes a layer operable, beside deciding: metrics and logs of every outcome, shadow
//! mode, exemptions, counting by outcome, gRPC answers and the decision extension. The
//! decision code calls one hook at each point: before deciding ([`Ops::exempts_request`],
//! [`Ops::exempts_key`]), at the verdict ([`DecisionEngine::admitted_outcome`],
//! [`DecisionEngine::refused_outcome`], [`Ops::provider_failed`]) and at the answer
//! ([`Ops::answer`], [`AdmittedHeaders::settle`](super::fields::AdmittedHeaders)).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};

use super::builder::RateLimitLayerBuilder;
use super::decide::{DecisionEngine, Verdict};
use super::decision_ext::RateLimitInfo;
use super::exempt::Exemptions;
use super::extract::{Key, RequestHead};
use super::fields::AdmittedHeaders;
use super::grpc::{self, Protocol};
use super::headers::{RATELIMIT, RATELIMIT_POLICY};
use super::outcome::{CountIfFn, CountOutcomes, Pending, Refunder};
use crate::observe::{self, NEAR_LIMIT_SHARE, Outcome, WarnThrottle};
use crate::{Error, RateLimiter};

/// The operability settings a builder collects.
#[derive(Clone)]
pub(crate) struct OpsBuilder {
    metrics: bool,
    shadow: bool,
    exemptions: Exemptions,
    counts: Option<Arc<CountIfFn>>,
    protocol: Protocol,
    decision_extension: bool,
}

impl Default for OpsBuilder {
    fn default() -> Self {
        OpsBuilder {
            metrics: true,
            shadow: false,
            exemptions: Exemptions::default(),
            counts: None,
            protocol: Protocol::default(),
            decision_extension: false,
        }
    }
}

/// A layer's operability settings and state, checked once.
pub(crate) struct Ops {
    pub(super) shadow: bool,
    exemptions: Option<Exemptions>,
    pub(super) counting: Option<Arc<CountOutcomes>>,
    protocol: Protocol,
    pub(super) decision_extension: bool,
    policy: Arc<str>,
    throttle: WarnThrottle,
    #[cfg(feature = "metrics")]
    pub(super) metrics: Option<observe::LayerMetrics>,
    /// Whether an admitted request needs the key's usage (the near-limit count, the
    /// handler's decision): the local provider then reads it in the decision's lookup.
    pub(super) wants_usage: bool,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("shadow", &self.shadow)
            .field("exemptions", &self.exemptions)
            .field("counting", &self.counting)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// One provider-failure line a second at most.
const WARN_INTERVAL_MS: u64 = 1_000;

impl OpsBuilder {
    /// The settings, checked: `refunder` is `None` for a layer that cannot count by
    /// outcome (a custom networked provider).
    pub(crate) fn build(
        self,
        limiter: &Arc<RateLimiter>,
        policy: &str,
        provider: &'static str,
        refunder: Option<Refunder>,
    ) -> Result<Ops, Error> {
        let counting = match (self.counts, refunder) {
            (None, _) => None,
            (Some(counts), Some(refunder)) => Some(Arc::new(CountOutcomes {
                limiter: limiter.clone(),
                counts,
                refunder,
            })),
            (Some(_), None) => {
                return Err(Error::invalid(
                    "RateLimitLayer count_if",
                    "a custom provider",
                    "counting by outcome needs a provider that gives units back: the local, \
                     Redis or hybrid one",
                ));
            }
        };
        let _ = provider;
        #[cfg(feature = "metrics")]
        let metrics = self
            .metrics
            .then(|| observe::LayerMetrics::new(policy, provider));
        #[cfg(feature = "metrics")]
        let wants_usage = metrics.is_some() || self.decision_extension;
        #[cfg(not(feature = "metrics"))]
        let wants_usage = self.decision_extension;
        Ok(Ops {
            shadow: self.shadow,
            exemptions: (!self.exemptions.is_empty()).then_some(self.exemptions),
            counting,
            protocol: self.protocol,
            decision_extension: self.decision_extension,
            policy: Arc::from(policy),
            throttle: WarnThrottle::new(WARN_INTERVAL_MS),
            #[cfg(feature = "metrics")]
            metrics,
            wants_usage,
        })
    }
}

impl OpsBuilder {
    /// Whether metrics are on (a set's per-limit counters register only then).
    pub(crate) fn metrics_on(&self) -> bool {
        self.metrics
    }
}

impl RateLimitLayerBuilder {
    /// Whether this layer reports to the `metrics` facade (feature `metrics`; default
    /// true). Off, it neither counts outcomes nor reads the usage the near-limit count
    /// needs: the allowed path is the one without the feature.
    pub fn metrics(mut self, on: bool) -> Self {
        self.ops_mut().metrics = on;
        self
    }

    /// Shadow mode (dark launch): decide and count as usual, but never refuse. Would-be
    /// refusals are counted as `shadow_rejected` in the metrics, logged at `debug` (with
    /// `shadow = true`), and the response carries the would-be `RateLimit-Policy` and
    /// `RateLimit` fields. For one limit of several in shadow, mark it
    /// [`LayerLimit::shadow`](super::LayerLimit::shadow).
    pub fn shadow(mut self, on: bool) -> Self {
        self.ops_mut().shadow = on;
        self
    }

    /// Requests no limit of this layer counts or refuses (counted as `exempt` in the
    /// metrics): health checks, CORS preflights, internal callers by key or by CIDR.
    ///
    /// ```
    /// use http::Method;
    /// use sluicegate::layer::Exemptions;
    /// let exempt = Exemptions::new()
    ///     .request(|r| r.method == Method::OPTIONS || r.uri.path() == "/health")
    ///     .key(|k| k.as_str().starts_with("internal_"))
    ///     .cidrs(["10.0.0.0/8".parse().unwrap()]);
    /// # let _ = exempt;
    /// ```
    pub fn exempt(mut self, exemptions: Exemptions) -> Self {
        self.ops_mut().exemptions = exemptions;
        self
    }

    /// Counts only the responses `counts` selects, e.g. `|status, _| status ==
    /// StatusCode::UNAUTHORIZED` for a login limit that counts failed attempts. The units
    /// are reserved before the handler runs and given back when the response is not
    /// selected, so the limit holds under any concurrency: no more selected responses in a
    /// window than its capacity. An inner service's error, or a request dropped before its
    /// response, keeps its units. On every provider (local in place; Redis and hybrid
    /// refunds run on a spawned task), for a one-rate layer and for a set of limits: a
    /// set's request gives its units back in every limit that counted it, so no limit of
    /// the set admits more selected responses in a window than its own capacity.
    pub fn count_if(
        mut self,
        counts: impl Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.ops_mut().counts = Some(Arc::new(counts));
        self
    }

    /// Gives a request's units back when its response is a success (2xx): only failures
    /// count. The same as `count_if(|status, _| !status.is_success())`.
    pub fn refund_on_success(self) -> Self {
        self.count_if(|status, _| !status.is_success())
    }

    /// How the layer's own answers are framed (default [`Protocol::Http`]);
    /// [`Protocol::Grpc`] behind a gRPC server.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.ops_mut().protocol = protocol;
        self
    }

    /// Whether an admitted request carries a [`RateLimitInfo`] extension for the handler
    /// (default false: it costs an allocation a request).
    pub fn decision_extension(mut self, on: bool) -> Self {
        self.ops_mut().decision_extension = on;
        self
    }
}

impl Ops {
    /// Whether the request is exempt before its key is read.
    #[inline]
    pub(crate) fn exempts_request(&self, head: &RequestHead<'_>) -> bool {
        self.exemptions
            .as_ref()
            .is_some_and(|e| e.exempts_request(head))
    }

    /// Whether nothing here needs more than the verdict and the usage after it (for the
    /// near-limit count): no exemptions, no counting by outcome, no decision for the
    /// handler. The layer's IPv4 fast path runs only then.
    pub(crate) fn verdict_only(&self) -> bool {
        self.exemptions.is_none() && self.counting.is_none() && !self.decision_extension
    }

    /// Whether the request is exempt by its key.
    #[inline]
    pub(crate) fn exempts_key(&self, key: &Key) -> bool {
        self.exemptions.as_ref().is_some_and(|e| e.exempts_key(key))
    }

    /// Counts an outcome.
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.metrics {
            m.outcome(outcome);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// An exempt request: counted, let through unlimited.
    #[cold]
    pub(crate) fn exempt(&self) -> Verdict {
        self.count(Outcome::Exempt);
        let mut fields = AdmittedHeaders::none();
        if self.decision_extension {
            fields.set_info(RateLimitInfo {
                policy: self.policy.clone(),
                remaining: None,
                suppression_factor: 0.0,
                shadow_refused: false,
                exempt: true,
            });
        }
        Verdict::Pass(fields)
    }

    /// A provider failure: counted, and logged at `warn` at most once a second with the
    /// number of failures the line stands for.
    #[cold]
    pub(crate) fn provider_failed(
        &self,
        limiter: &RateLimiter,
        err: &Error,
        policy: &dyn std::fmt::Debug,
    ) {
        self.count(Outcome::ProviderError);
        if let Some(failures) = self.throttle.event(limiter.local().now_ms()) {
            tracing::warn!(error = %err, policy = %self.policy, on_error = ?policy, failures, "sluicegate: rate-limit provider failed");
        }
    }

    /// A networked decision, timed into the latency histogram (feature `metrics`).
    #[inline]
    pub(crate) fn timed<T: Send + 'static>(
        &self,
        decision: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> {
        #[cfg(feature = "metrics")]
        if let Some(histogram) = self.metrics.as_ref().and_then(|m| m.latency_handle()) {
            let start = std::time::Instant::now();
            return Box::pin(async move {
                let out = decision.await;
                histogram.record(start.elapsed().as_secs_f64());
                out
            });
        }
        decision
    }

    /// The layer's own answer, framed for the protocol.
    #[inline]
    pub(crate) fn answer(&self, response: Box<Response<Bytes>>) -> Box<Response<Bytes>> {
        match self.protocol {
            Protocol::Http => response,
            Protocol::Grpc => {
                let retry_ms = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(|s| s.saturating_mul(1000));
                Box::new(grpc::into_grpc(*response, retry_ms))
            }
        }
    }
}

/// What an admitted decision says about the key's quota.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    /// Units left after the request, where the provider knows it.
    pub(crate) left: Option<u64>,
    /// The quota they are left of.
    pub(crate) quota: Option<u64>,
    /// The suppression factor (0 when not suppressing).
    pub(crate) factor: f64,
}

impl DecisionEngine {
    /// An admitted request: counted (and near the limit when at least 80 % of `quota` is
    /// used after it); with the decision extension or counting by outcome, what the
    /// response future needs.
    #[inline]
    pub(super) fn admitted_outcome(
        &self,
        fields: AdmittedHeaders,
        key: &Key,
        standing: Standing,
        cost: u64,
        before_ms: u64,
    ) -> Verdict {
        self.admitted_with(fields, key, standing, cost, before_ms, || None)
    }

    /// [`admitted_outcome`](Self::admitted_outcome), with a set layer's units (the groups
    /// that counted the request) for counting by outcome. `set` is called only when the
    /// layer counts by outcome: the one-rate path builds, moves and drops nothing more.
    #[inline]
    pub(super) fn admitted_with(
        &self,
        mut fields: AdmittedHeaders,
        key: &Key,
        standing: Standing,
        cost: u64,
        before_ms: u64,
        set: impl FnOnce() -> Option<super::set_ops::SetUnits>,
    ) -> Verdict {
        let ops = &self.ops;
        let Standing {
            left: remaining,
            quota,
            factor,
        } = standing;
        ops.count(Outcome::Allowed);
        #[cfg(feature = "metrics")]
        if let (Some(m), Some(left), Some(quota)) = (&ops.metrics, remaining, quota) {
            if (quota.saturating_sub(left) as f64) >= NEAR_LIMIT_SHARE * quota as f64 {
                m.near_limit();
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (quota, NEAR_LIMIT_SHARE);
        if ops.decision_extension {
            fields.set_info(RateLimitInfo {
                policy: ops.policy.clone(),
                remaining,
                suppression_factor: factor,
                shadow_refused: false,
                exempt: false,
            });
        }
        if let Some(counting) = &ops.counting {
            fields.set_pending(Pending {
                counting: counting.clone(),
                key: key.clone(),
                cost,
                before_ms,
                set: set(),
            });
        }
        Verdict::Pass(fields)
    }

    /// A refusal (or a shed): counted and logged with the key's fingerprint; in shadow mode
    /// let through, carrying the would-be fields.
    #[cold]
    pub(super) fn refused_outcome(
        &self,
        outcome: Outcome,
        policy: &str,
        key: &Key,
        response: Box<Response<Bytes>>,
    ) -> Verdict {
        let ops = &self.ops;
        let fingerprint = observe::fingerprint(key.as_str());
        if !ops.shadow {
            ops.count(outcome);
            tracing::debug!(policy, key = %fingerprint, %outcome, status = response.status().as_u16(), "sluicegate: request refused");
            return Verdict::Reject(response);
        }
        ops.count(Outcome::ShadowRejected);
        tracing::debug!(policy, key = %fingerprint, would_be = %outcome, shadow = true, "sluicegate: request would have been refused (shadow mode)");
        let h = response.headers();
        let mut fields = AdmittedHeaders::with(
            h.get(RATELIMIT_POLICY).cloned(),
            h.get(RATELIMIT).cloned(),
            None,
        );
        if ops.decision_extension {
            fields.set_info(RateLimitInfo {
                policy: Arc::from(policy),
                remaining: Some(0),
                suppression_factor: 0.0,
                shadow_refused: true,
                exempt: false,
            });
        }
        Verdict::Pass(fields)
    }
}
