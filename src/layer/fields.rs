//! Which fields each answer carries: the ones added to an admitted response
//! ([`AdmittedHeaders`]), and those on the layer's own `429` and `503`.
//!
//! The table of what each answer carries is in the [layer docs](super).
//!
//! The waits follow the rules in [`headers`](super::headers): never longer than the
//! policy's window.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};

use super::decide::DecisionEngine;
use super::extract::Key;
use super::headers::{self, RATELIMIT, RATELIMIT_POLICY, SUPPRESSION_FACTOR};
use super::response::{Rejection, RejectionBody};
use crate::RateLimit;

/// Headers to add to the inner service's response: none on the common path, so the
/// local path's future carries one pointer, not three header values.
#[derive(Debug, Default)]
pub(crate) struct AdmittedHeaders(Option<Box<AdmittedValues>>);

#[derive(Debug, Default)]
struct AdmittedValues {
    policy: Option<HeaderValue>,
    ratelimit: Option<HeaderValue>,
    factor: Option<HeaderValue>,
    /// The decision for the handler (`ops.rs`).
    info: Option<super::decision_ext::RateLimitInfo>,
    /// Units held until the response says whether they count (`outcome.rs`).
    pending: Option<super::outcome::Pending>,
}

impl AdmittedHeaders {
    /// Nothing to add.
    pub(crate) fn none() -> Self {
        AdmittedHeaders(None)
    }

    /// Whether there is nothing to add (nor any decision or units held).
    #[inline]
    pub(crate) fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// These fields (any may be absent).
    pub(crate) fn with(
        policy: Option<HeaderValue>,
        ratelimit: Option<HeaderValue>,
        factor: Option<HeaderValue>,
    ) -> Self {
        AdmittedHeaders(Some(Box::new(AdmittedValues {
            policy,
            ratelimit,
            factor,
            ..Default::default()
        })))
    }

    fn values(&mut self) -> &mut AdmittedValues {
        self.0.get_or_insert_with(Default::default)
    }

    /// Hands `info` to the handler as a request extension.
    pub(crate) fn set_info(&mut self, info: super::decision_ext::RateLimitInfo) {
        self.values().info = Some(info);
    }

    /// Holds the request's units until its response.
    pub(crate) fn set_pending(&mut self, pending: super::outcome::Pending) {
        self.values().pending = Some(pending);
    }

    /// The decision for the handler, if the layer hands it one.
    #[inline]
    pub(crate) fn take_info(&mut self) -> Option<super::decision_ext::RateLimitInfo> {
        self.0.as_mut()?.info.take()
    }

    /// The response is in: settles units held for counting by outcome.
    #[inline]
    pub(crate) fn settle(&mut self, status: http::StatusCode, headers: &HeaderMap) {
        if let Some(pending) = self.0.as_mut().and_then(|v| v.pending.take()) {
            super::outcome::CountOutcomes::settle(pending, status, headers);
        }
    }

    /// Adds the fields to the inner service's response headers (none on the common path:
    /// one check, inlined).
    #[inline]
    pub(crate) fn apply(mut self, headers: &mut HeaderMap) {
        if let Some(values) = self.0.take() {
            values.apply(headers);
        }
    }
}

/// The values are dropped out of line: the common path's drop (nothing to drop) is one
/// test in the future's drop glue, not a call.
impl Drop for AdmittedHeaders {
    #[inline]
    fn drop(&mut self) {
        if let Some(values) = self.0.take() {
            super::future::drop_out_of_line(values);
        }
    }
}

impl AdmittedValues {
    fn apply(self: Box<Self>, headers: &mut HeaderMap) {
        let values = *self;
        if let Some(v) = values.policy {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Some(v) = values.ratelimit {
            headers.insert(RATELIMIT, v);
        }
        if let Some(v) = values.factor {
            headers.insert(SUPPRESSION_FACTOR, v);
        }
    }
}

/// What an admitted decision says is left of the key's quota, for `RateLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Left {
    /// Whole requests of one unit still admitted.
    pub(crate) remaining: u64,
    /// Seconds until the usage next falls (`t`), at most the window.
    pub(crate) reset_s: u64,
}

impl DecisionEngine {
    /// The fields of an admitted response; `left` is what the decision says is left of the
    /// key's quota where the provider reports it, `factor` the suppression factor when the
    /// suppressed strategy admitted it over capacity.
    pub(super) fn admitted(
        &self,
        rate: RateLimit,
        left: Option<Left>,
        factor: Option<f64>,
    ) -> AdmittedHeaders {
        let mut values = AdmittedValues::default();
        if self.headers_on_allowed {
            let p = &self.prebuilt;
            values.policy = Some(p.policy_for(rate.get(), self.fixed_rate()));
            // From the decision itself: no second lookup or round trip.
            values.ratelimit = left
                .map(|l| headers::ratelimit_value(&p.name, l.remaining, l.reset_s.min(p.window_s)));
        }
        if let Some(factor) = factor.filter(|f| self.factor_on_allowed && *f > 0.0) {
            values.factor = Some(self.prebuilt.factor(factor));
        }
        if values.policy.is_none() && values.factor.is_none() {
            // (`info` and `pending` are set later, by `ops.rs`.)
            return AdmittedHeaders::none();
        }
        AdmittedHeaders(Some(Box::new(values)))
    }

    /// The suppression factor header, pre-built where the factor has three decimals.
    pub(super) fn prebuilt_factor(&self, factor: f64) -> HeaderValue {
        self.prebuilt.factor(factor)
    }

    /// The `429` of the absolute strategy: the core's wait, rounded up and capped at the
    /// window.
    pub(super) fn limited(&self, key: &Key, rate: RateLimit, wait_ms: u64) -> Response<Bytes> {
        let seconds = headers::retry_after_seconds(wait_ms, self.prebuilt.window_s);
        let mut response = self.body.build(&Rejection::RateLimited {
            key,
            retry_after_seconds: seconds,
            violated: self.prebuilt.violated(),
        });
        self.add_limit_fields(&mut response, rate, seconds);
        response
    }

    /// The `503` of the suppressed strategy; the wait is
    /// [`headers::shed_retry_after_seconds`].
    pub(super) fn shed(&self, key: &Key, rate: RateLimit, factor: f64) -> Response<Bytes> {
        let seconds = headers::shed_retry_after_seconds(factor, self.prebuilt.window_s);
        let mut response = self.body.build(&Rejection::Suppressed {
            key,
            suppression_factor: factor,
            retry_after_seconds: seconds,
            violated: self.prebuilt.violated(),
        });
        self.add_limit_fields(&mut response, rate, seconds);
        let h = response.headers_mut();
        if !matches!(self.body, RejectionBody::Custom(_)) || !h.contains_key(SUPPRESSION_FACTOR) {
            h.insert(SUPPRESSION_FACTOR, self.prebuilt.factor(factor));
        }
        response
    }

    /// Adds `Retry-After`, `RateLimit-Policy` and `RateLimit: r=0;t=<seconds>` where the
    /// body (a hook) did not set them. The built-in bodies set none: no lookups then (the
    /// reject path is the one taken under attack).
    fn add_limit_fields(&self, response: &mut Response<Bytes>, rate: RateLimit, seconds: u64) {
        let p = &self.prebuilt;
        let h = response.headers_mut();
        if !matches!(self.body, RejectionBody::Custom(_)) {
            h.insert(header::RETRY_AFTER, p.retry_after(seconds));
            h.insert(
                RATELIMIT_POLICY,
                p.policy_for(rate.get(), self.fixed_rate()),
            );
            h.insert(RATELIMIT, p.limited(seconds));
            return;
        }
        if !h.contains_key(header::RETRY_AFTER) {
            h.insert(header::RETRY_AFTER, p.retry_after(seconds));
        }
        if !h.contains_key(RATELIMIT_POLICY) {
            h.insert(
                RATELIMIT_POLICY,
                p.policy_for(rate.get(), self.fixed_rate()),
            );
        }
        if !h.contains_key(RATELIMIT) {
            h.insert(RATELIMIT, p.limited(seconds));
        }
    }
}
