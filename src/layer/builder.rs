//! [`RateLimitLayerBuilder`]: every setting of the layer, checked once when it is built.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::RateLimitLayer;
use super::decide::DecisionEngine;
use super::extract::{Key, KeyExtractor, PeerIp, RequestHead};
use super::headers::{self, Prebuilt};
use super::provider::{AsyncProvider, Backend, Provider};
use super::response::{Rejection, RejectionBody, RejectionFn};
use super::set::{LayerLimit, SetEngine};
use crate::Strategy;
use crate::policy::LimitSet;
use crate::{Error, RateLimit, RateLimiter};

/// What happens to a request whose key cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyErrorPolicy {
    /// Answer with the error's own status ([`KeyError::status`](super::KeyError::status)) and a body that says what
    /// is missing (the default).
    #[default]
    Reject,
    /// Answer with this status instead (400, 401 or 500 are the usual choices).
    RejectWith(StatusCode),
    /// Let the request through, unlimited (logged at `debug`).
    ///
    /// **This lets any client bypass the limit**: a client that sends a malformed key on
    /// purpose (a garbled `X-Forwarded-For` hop, a header it leaves out, an over-long key)
    /// is never counted. Use it only for keys a client cannot influence, or when a limit
    /// is advisory; [`Reject`](Self::Reject) is the safe default.
    Allow,
}

/// What happens when a networked provider (Redis) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderErrorPolicy {
    /// Let the request through (the default): an outage of the limiter is not an outage of
    /// the service. Each failure is logged at `warn` and counted
    /// ([`RateLimitLayer::provider_errors`]).
    #[default]
    FailOpen,
    /// Answer `503 Service Unavailable`; also logged and counted.
    FailClosed,
}

/// A resolver from key and request to the key's rate (plans by API key, for example).
pub type RateFn = dyn Fn(&Key, &RequestHead<'_>) -> RateLimit + Send + Sync;
/// The cost of a request in units of the rate.
pub type CostFn = dyn Fn(&RequestHead<'_>) -> u64 + Send + Sync;

#[derive(Clone)]
pub(crate) enum RateSource {
    Fixed(RateLimit),
    Resolver(Arc<RateFn>),
}

#[derive(Clone)]
pub(crate) enum CostSource {
    Fixed(u64),
    Resolver(Arc<CostFn>),
}

/// The longest key the layer takes by default, in bytes: longer keys are answered `431`
/// before they reach a store.
pub const DEFAULT_MAX_KEY_LEN: usize = 256;

/// Builds a [`RateLimitLayer`]; every setting has a default but the rate.
///
/// ```
/// # use std::sync::Arc;
/// # use sluicegate::{RateLimit, RateLimiterBuilder, local::LocalRateLimiterOptions};
/// use sluicegate::Strategy;
/// use sluicegate::layer::{HeaderKey, KeyErrorPolicy, RateLimitLayer};
/// # fn main() -> Result<(), sluicegate::Error> {
/// # let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
/// #     window_size_seconds: 60.try_into()?, rate_group_size_ms: 100.try_into()?,
/// #     hard_limit_factor: Default::default(), suppression_factor_cache_ms: Default::default(),
/// # }).build()?);
/// let layer = RateLimitLayer::builder(limiter)
///     .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
///     .rate_fn(|key, _req| {
///         let per_second = if key.as_str().starts_with("pro_") { 100.0 } else { 5.0 };
///         RateLimit::try_from(per_second).expect("positive")
///     })
///     .strategy(Strategy::Absolute)
///     .on_key_error(KeyErrorPolicy::RejectWith(http::StatusCode::UNAUTHORIZED))
///     .headers_on_allowed(true)
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
///
/// # Several limits
/// [`limit`](Self::limit) and [`limits`](Self::limits) put a [`LimitSet`] on the layer in
/// place of the one rate: each limit with its own name, quota, strategy and (with
/// [`LayerLimit::key`]) its own key, decided all or nothing (a request one limit refuses
/// counts in none). The builder is `Clone`: set the common parts once and clone it per
/// route, one limiter behind every layer.
///
/// ```
/// # use std::sync::Arc;
/// # use sluicegate::{RateLimiterBuilder, local::LocalRateLimiterOptions};
/// use sluicegate::layer::{HeaderKey, LayerLimit, PeerIp, RateLimitLayer};
/// use sluicegate::policy::{Limit, LimitName, LimitSet, Quota};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let limiter = Arc::new(RateLimiterBuilder::new(LocalRateLimiterOptions {
/// #     window_size_seconds: 60.try_into()?, rate_group_size_ms: 100.try_into()?,
/// #     hard_limit_factor: Default::default(), suppression_factor_cache_ms: Default::default(),
/// # }).build()?);
/// let base = RateLimitLayer::builder(limiter)
///     .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
///     .problem_json();
/// // Per API key: 3 a second and 10 a minute together.
/// let search = base.clone().limits("burst = 3/s; minute = 10/min".parse::<LimitSet>()?).build()?;
/// // Per API key and, beside it, per peer IP.
/// let upload = base
///     .limit(Limit::new(LimitName::new("key")?, Quota::per_minute(30.0)?))
///     .limit(LayerLimit::new(Limit::new(LimitName::new("ip")?, Quota::per_minute(100.0)?))
///         .key(PeerIp::new()))
///     .build()?;
/// # let _ = (search, upload); Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimitLayerBuilder {
    limiter: Arc<RateLimiter>,
    extractor: Arc<dyn KeyExtractor>,
    /// The extractor, when it is [`PeerIp`]: called without the `dyn` on the hot path.
    peer_ip: Option<PeerIp>,
    limits: Vec<LayerLimit>,
    max_key_len: usize,
    rate: Option<RateSource>,
    cost: CostSource,
    strategy: Strategy,
    provider: Provider,
    async_provider: Option<Arc<dyn AsyncProvider>>,
    policy_name: String,
    on_key_error: KeyErrorPolicy,
    on_provider_error: ProviderErrorPolicy,
    headers_on_allowed: bool,
    factor_on_allowed: bool,
    body: RejectionBody,
    /// Shadow mode, exemptions, counting by outcome, protocol (`ops.rs`).
    ops: super::ops::OpsBuilder,
}

impl std::fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("strategy", &self.strategy)
            .field("provider", &self.provider)
            .field("policy_name", &self.policy_name)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    pub(crate) fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimitLayerBuilder {
            limiter,
            extractor: Arc::new(PeerIp::new()),
            peer_ip: Some(PeerIp::new()),
            limits: Vec::new(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
            rate: None,
            cost: CostSource::Fixed(1),
            strategy: Strategy::default(),
            provider: Provider::default(),
            async_provider: None,
            policy_name: "default".to_owned(),
            on_key_error: KeyErrorPolicy::default(),
            on_provider_error: ProviderErrorPolicy::default(),
            headers_on_allowed: false,
            factor_on_allowed: true,
            body: RejectionBody::default(),
            ops: Default::default(),
        }
    }

    /// The operability settings, for `ops.rs`'s builder methods.
    pub(super) fn ops_mut(&mut self) -> &mut super::ops::OpsBuilder {
        &mut self.ops
    }

    /// What requests are keyed by (default: [`PeerIp`]); with several limits, the key of
    /// every limit that has none of its own.
    pub fn key(mut self, extractor: impl KeyExtractor) -> Self {
        self.peer_ip = (&extractor as &dyn std::any::Any)
            .downcast_ref::<PeerIp>()
            .copied();
        self.extractor = Arc::new(extractor);
        self
    }

    /// Adds a limit: the layer then decides a [`LimitSet`] (every limit added) in place of
    /// one rate, all or nothing. A [`Limit`](crate::policy::Limit) is keyed by the layer's
    /// key; a [`LayerLimit`] may have its own. Give either limits or
    /// [`rate`](Self::rate)/[`rate_fn`](Self::rate_fn), not both.
    ///
    /// Each limit's name is its policy name in `RateLimit-Policy`; its strategy is its own
    /// ([`strategy`](Self::strategy) is for the one-rate layer).
    pub fn limit(mut self, limit: impl Into<LayerLimit>) -> Self {
        self.limits.push(limit.into());
        self
    }

    /// Adds every limit of `set`, keyed by the layer's key (e.g. a set parsed from
    /// `"burst = 3/s; minute = 10/min"`).
    pub fn limits(mut self, set: LimitSet) -> Self {
        self.limits.extend(set.iter().cloned().map(LayerLimit::new));
        self
    }

    /// The longest key taken, in bytes (default [`DEFAULT_MAX_KEY_LEN`], 256). A longer
    /// key is refused with `431 Request Header Fields Too Large` before it reaches a store,
    /// whatever the [`KeyErrorPolicy`] (letting it through would let any client skip the
    /// limit by padding its key). 431 because the keys that can grow long come from request
    /// headers (an API key, a forwarded chain); a [`key_fn`](super::key_fn) reading the
    /// path gets the same answer.
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// The same rate for every key.
    pub fn rate(mut self, rate: RateLimit) -> Self {
        self.rate = Some(RateSource::Fixed(rate));
        self
    }

    /// A rate per key (and request), e.g. plans by API-key prefix. It is called on every
    /// request: keep it cheap. A rate whose capacity is below one request is answered with
    /// `500` and logged, since it is a bug in the resolver.
    pub fn rate_fn(
        mut self,
        resolve: impl Fn(&Key, &RequestHead<'_>) -> RateLimit + Send + Sync + 'static,
    ) -> Self {
        self.rate = Some(RateSource::Resolver(Arc::new(resolve)));
        self
    }

    /// Every request costs `units` (default 1).
    pub fn cost(mut self, units: u64) -> Self {
        self.cost = CostSource::Fixed(units);
        self
    }

    /// A cost per request (e.g. by method or route). A cost of 0 is counted as 1.
    pub fn cost_fn(
        mut self,
        cost: impl Fn(&RequestHead<'_>) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.cost = CostSource::Resolver(Arc::new(cost));
        self
    }

    /// Absolute (default) or suppressed.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Which provider keeps the counts (default: [`Provider::Local`]).
    pub fn provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    /// A networked provider in place of the local one (the Redis and hybrid seam).
    #[allow(dead_code)]
    pub(crate) fn async_provider(mut self, provider: Arc<dyn AsyncProvider>) -> Self {
        self.async_provider = Some(provider);
        self
    }

    /// The policy name in the IETF fields (default `"default"`): 1 to 64 characters from
    /// `A-Z a-z 0-9 _ - .`.
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.policy_name = name.into();
        self
    }

    /// Whether admitted responses carry `RateLimit-Policy` and `RateLimit` too (default
    /// false: only limited ones do). On an admitted response `r` is the quota left and `t`
    /// is the window, the longest time until all of the current usage has expired (local);
    /// with the Redis and hybrid providers, the time until the key's usage next falls. The
    /// decision itself carries the usage on every provider: no second lookup, no second
    /// round trip.
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }

    /// Whether a request admitted while its key is suppressed carries the suppression
    /// factor header (default true).
    pub fn suppression_header_on_allowed(mut self, on: bool) -> Self {
        self.factor_on_allowed = on;
        self
    }

    /// What to do when no key can be read (default [`KeyErrorPolicy::Reject`]).
    pub fn on_key_error(mut self, policy: KeyErrorPolicy) -> Self {
        self.on_key_error = policy;
        self
    }

    /// What to do when a networked provider fails (default [`ProviderErrorPolicy::FailOpen`]).
    pub fn on_provider_error(mut self, policy: ProviderErrorPolicy) -> Self {
        self.on_provider_error = policy;
        self
    }

    /// Answers with RFC 9457 `application/problem+json` bodies.
    pub fn problem_json(mut self) -> Self {
        self.body = RejectionBody::ProblemJson;
        self
    }

    /// Builds rejections with a hook; `Retry-After`, the IETF fields and the suppression
    /// factor are added afterwards where the hook did not set them.
    pub fn rejection_fn(
        mut self,
        hook: impl Fn(&Rejection<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        let hook: Arc<RejectionFn> = Arc::new(hook);
        self.body = RejectionBody::Custom(hook);
        self
    }

    /// How rejections are worded (plain text by default).
    pub fn rejection_body(mut self, body: RejectionBody) -> Self {
        self.body = body;
        self
    }

    /// Checks the configuration and builds the layer: a missing rate, a fixed rate whose
    /// capacity is below one request, a fixed cost of 0 or above the capacity, or a bad
    /// policy name are errors.
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        let window_s = self.limiter.window_size_seconds();
        headers::validate_policy_name(&self.policy_name)?;
        if self.max_key_len == 0 {
            return Err(Error::invalid(
                "RateLimitLayer max_key_len",
                0,
                "must be at least 1 byte",
            ));
        }
        let set = if self.limits.is_empty() {
            None
        } else {
            if self.rate.is_some() {
                return Err(Error::invalid(
                    "RateLimitLayer rate",
                    "a rate and limits",
                    "give either `.rate`/`.rate_fn` or `.limit`/`.limits`, not both",
                ));
            }
            Some(Box::new(SetEngine::new(
                &self.limiter,
                self.provider,
                self.extractor.clone(),
                self.limits,
                &self.cost,
                self.ops.metrics_on(),
            )?))
        };
        // The one-rate parts are unused with a set; a placeholder rate keeps them simple.
        let rate = match (self.rate, &set) {
            (None, Some(_)) => Some(RateSource::Fixed(
                RateLimit::try_from(1.0).expect("1 is a valid rate"),
            )),
            (rate, _) => rate,
        };
        let rate = rate.ok_or_else(|| {
            Error::invalid(
                "RateLimitLayer rate",
                "none",
                "set one with `.rate(RateLimit)` or `.rate_fn(..)`",
            )
        })?;
        let fixed_rate = match &rate {
            RateSource::Fixed(r) => Some(r.get()),
            RateSource::Resolver(_) => None,
        };
        if set.is_some() {
            // The set checked its own quotas against the cost.
        } else if let Some(r) = fixed_rate {
            let cost = match self.cost {
                CostSource::Fixed(c) => c,
                CostSource::Resolver(_) => 1,
            };
            crate::call::checked_capacity(r, window_s, cost)?;
        } else if let CostSource::Fixed(0) = self.cost {
            return Err(Error::ZeroCount);
        }
        let backend = match self.async_provider {
            _ if set.is_some() => Backend::Local(self.strategy),
            Some(p) => Backend::Async(p),
            None => match self.provider {
                Provider::Local => Backend::Local(self.strategy),
                #[cfg(feature = "redis-tokio")]
                Provider::Redis | Provider::Hybrid => {
                    if !self.limiter.redis().is_configured() {
                        return Err(Error::RedisNotConfigured);
                    }
                    if self.provider == Provider::Hybrid {
                        Backend::Hybrid(self.strategy)
                    } else {
                        Backend::Async(Arc::new(super::provider::Networked {
                            limiter: self.limiter.clone(),
                            strategy: self.strategy,
                            usage: self.headers_on_allowed,
                        }))
                    }
                }
            },
        };
        let prebuilt = Prebuilt::new(
            &self.policy_name,
            window_s,
            fixed_rate,
            self.strategy == Strategy::Suppressed
                || set.as_ref().is_some_and(|s| s.any_suppressed()),
        );
        let refunder = match (&backend, &set) {
            (_, Some(_)) => Some(super::outcome::Refunder::Set),
            (Backend::Local(s), None) => Some(super::outcome::Refunder::Local(*s)),
            #[cfg(feature = "redis-tokio")]
            (Backend::Hybrid(s), None) => Some(super::outcome::Refunder::Hybrid(*s)),
            #[cfg(feature = "redis-tokio")]
            (Backend::Async(_), None) if self.provider == Provider::Redis => {
                Some(super::outcome::Refunder::Redis(self.strategy))
            }
            (Backend::Async(_), None) => None,
        };
        let provider_label = match self.provider {
            Provider::Local => "local",
            #[cfg(feature = "redis-tokio")]
            Provider::Redis => "redis",
            #[cfg(feature = "redis-tokio")]
            Provider::Hybrid => "hybrid",
        };
        let ops = self
            .ops
            .build(&self.limiter, &self.policy_name, provider_label, refunder)?;
        let fast_ipv4 = self.peer_ip.is_some()
            && set.is_none()
            && fixed_rate.is_some()
            && matches!(backend, Backend::Local(_))
            && !self.headers_on_allowed
            && ops.verdict_only();
        // An admitted request is near the limit when `min(used, quota) as f64 >= share *
        // quota as f64`: for whole `used`, from the share's ceiling on (at most the quota).
        let fixed_cap = match (fixed_rate, &self.cost) {
            (Some(r), CostSource::Fixed(c)) => crate::call::checked_capacity(r, window_s, *c).ok(),
            _ => None,
        };
        // The default configuration's path: `fast_ipv4` with the rate and cost fixed and
        // checked, and the metrics on.
        #[cfg(feature = "metrics")]
        let counted = ops.metrics.is_some();
        #[cfg(not(feature = "metrics"))]
        let counted = false;
        let counted_ipv4 = match (&rate, &backend, &self.cost, fixed_cap) {
            (
                RateSource::Fixed(rate),
                Backend::Local(strategy),
                CostSource::Fixed(cost),
                Some(cap),
            ) if fast_ipv4 && counted => Some(super::decide::CountedIpv4 {
                strategy: *strategy,
                rate: *rate,
                cost: *cost,
                cap,
            }),
            _ => None,
        };
        let near_limit_at = fixed_rate.map_or(u64::MAX, |r| {
            let quota = headers::quota(r, window_s);
            (crate::observe::NEAR_LIMIT_SHARE * quota as f64).ceil() as u64
        });
        Ok(RateLimitLayer::from_engine(Arc::new(DecisionEngine {
            limiter: self.limiter,
            extractor: self.extractor,
            peer_ip: self.peer_ip,
            rate,
            cost: self.cost,
            strategy: self.strategy,
            backend,
            on_key_error: self.on_key_error,
            on_provider_error: self.on_provider_error,
            headers_on_allowed: self.headers_on_allowed,
            factor_on_allowed: self.factor_on_allowed,
            body: self.body,
            prebuilt,
            set,
            max_key_len: self.max_key_len,
            fast_ipv4,
            near_limit_at,
            counted_ipv4,
            provider_errors: AtomicU64::new(0),
            ops,
        })))
    }
}
