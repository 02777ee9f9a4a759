//! Several limits on one layer: a [`LimitSet`] decided all or nothing, each limit with its
//! own key, and the fields that list every policy of the set.
//!
//! The set is decided by the provider's limit-set machinery (`rl.local().policy(set)`,
//! `rl.redis().policy(set)`, `rl.hybrid().policy(set)`): a request is admitted iff every limit admits it, and a request
//! any limit refuses counts in none. The fields, after draft-ietf-httpapi-ratelimit-headers-10:
//!
//! - `RateLimit-Policy` lists every policy: `"burst";q=3;w=1, "minute";q=10;w=60`.
//! - `RateLimit` lists every policy's remaining quota. On an admitted response each item is
//!   `r=<left>;t=<s>`, `t` the seconds until the policy's usage next falls (its oldest
//!   counted group expires), at most `w`. On a refusal a policy that refused is
//!   `r=<left>;t=<s>`, `t` its own wait until it admits the call (at most `w`); a policy
//!   that did not refuse carries only `r`, since the client waits for the refusing ones.
//! - `Retry-After` is the longest `t` of the refusing policies: the wait until the whole
//!   set admits (given the usage counted now), never earlier than any `t` in `RateLimit`.
//!
//! A limit may be shadowed ([`LayerLimit::shadow`]) or have exemptions of its own
//! ([`LayerLimit::exempt`]): the set is then decided in groups, enforcing limits first
//! (`set_ops.rs`). The fields then list only the enforcing limits that decided the request
//! (not the shadow ones, not one the request is exempt from); `RateLimit-Policy` too.
//!
//! Counting by outcome ([`count_if`](super::RateLimitLayerBuilder::count_if)) works on a set:
//! an admitted request holds its units in every limit that counted it, and a response not
//! selected gives them back in all of them (each provider's `refund_each`).

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use super::builder::CostSource;
use super::decide::{DecisionEngine, Verdict};
use super::exempt::Exemptions;
use super::extract::{Key, KeyExtractor, RequestHead};
use super::fields::AdmittedHeaders;
use super::headers::{self, RATELIMIT, RATELIMIT_POLICY, SUPPRESSION_FACTOR};
use super::provider::Provider;
use super::response::{Rejection, ViolatedPolicies};
use super::set_ops::{ALL, Group, SetDone, SetUnits, run_groups};
use crate::config::capacity;
use crate::policy::{Limit, LimitSet, LocalPolicy, MAX_LIMITS, Outcome, SetDecision};
use crate::{Error, RateLimiter};

/// One limit of a layer, with the key it counts by: the layer's own key unless
/// [`key`](Self::key) gives another (a per-IP limit beside per-API-key ones).
///
/// A plain [`Limit`] converts into one keyed by the layer's key.
#[derive(Clone)]
pub struct LayerLimit {
    pub(super) limit: Limit,
    pub(super) key: Option<Arc<dyn KeyExtractor>>,
    pub(super) count: Option<Arc<CountFn>>,
    pub(super) shadow: bool,
    pub(super) exempt: Option<Exemptions>,
}

/// A resolver of one limit's quota for a request: the count per the limit's own window
/// (plans by API key, for example). Its window, group and strategy stay the limit's.
pub type CountFn = dyn Fn(&Key, &RequestHead<'_>) -> f64 + Send + Sync;

impl std::fmt::Debug for LayerLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerLimit")
            .field("limit", &self.limit.to_string())
            .field("own_key", &self.key.is_some())
            .field("resolved", &self.count.is_some())
            .field("shadow", &self.shadow)
            .field("exempt", &self.exempt)
            .finish()
    }
}

impl LayerLimit {
    /// `limit`, keyed by the layer's key.
    pub fn new(limit: Limit) -> Self {
        LayerLimit {
            limit,
            key: None,
            count: None,
            shadow: false,
            exempt: None,
        }
    }

    /// Resolves this limit's quota per request: `resolve(key, request)` is the count per
    /// the limit's window (its window, group and strategy stay the limit's; its own count
    /// is the one shown when nothing is resolved). Called on every request: keep it cheap.
    /// A count below 1 or not finite is answered `500` and logged, since it is a bug in the
    /// resolver; a request costing more than the count is refused by this limit.
    ///
    /// ```
    /// # use sluicegate::layer::LayerLimit;
    /// # use sluicegate::policy::{Limit, LimitName, Quota};
    /// # fn main() -> Result<(), sluicegate::Error> {
    /// // `pro_` keys 50 per 10 s, any other key 5.
    /// let plans = LayerLimit::new(Limit::new(LimitName::new("plan")?, Quota::new(5.0, 10)?))
    ///     .count_fn(|key, _req| if key.as_str().starts_with("pro_") { 50.0 } else { 5.0 });
    /// # let _ = plans; Ok(()) }
    /// ```
    pub fn count_fn(
        mut self,
        resolve: impl Fn(&Key, &RequestHead<'_>) -> f64 + Send + Sync + 'static,
    ) -> Self {
        self.count = Some(Arc::new(resolve));
        self
    }

    /// Counts this limit by `extractor`'s key instead of the layer's.
    pub fn key(mut self, extractor: impl KeyExtractor) -> Self {
        self.key = Some(Arc::new(extractor));
        self
    }

    /// Shadow mode for this limit alone (dark-launching one limit beside enforcing ones):
    /// it decides and counts, but never refuses. The request is decided by the enforcing
    /// limits of the set first; a request they refuse counts in no limit, this one
    /// included. A request they admit is then decided by the shadow limits, as a set of
    /// their own: if one would refuse it, it counts in none of them, the refusing limits
    /// count `shadow_rejected` for their own policy (`sluicegate_requests_total{policy =
    /// <limit name>}`) and each logs a `debug` event with the key's fingerprint and
    /// `shadow = true`; the request goes on. Else it counts in every shadow limit.
    ///
    /// The response's `RateLimit` and `RateLimit-Policy` fields list the enforcing limits
    /// only: they tell a client what it is held to, and a shadow limit holds it to nothing.
    /// A handler sees a would-be refusal in the metrics and logs, not in the fields.
    ///
    /// ```
    /// # use sluicegate::layer::{LayerLimit, PeerIp};
    /// # use sluicegate::policy::{Limit, LimitName, Quota};
    /// # fn main() -> Result<(), sluicegate::Error> {
    /// // Try a per-IP limit out beside the enforced per-key one.
    /// let ip = LayerLimit::new(Limit::new(LimitName::new("ip")?, Quota::per_minute(100.0)?))
    ///     .key(PeerIp::new())
    ///     .shadow(true);
    /// # let _ = ip; Ok(()) }
    /// ```
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// Requests this limit leaves out (internal callers on a per-key limit, say): an exempt
    /// request spends nothing in it and is counted `exempt` for its policy, while the other
    /// limits decide as usual. Key predicates see this limit's own key. A request every
    /// limit of the set exempts is exempt from the layer (counted `exempt` for the layer's
    /// policy too). Exemptions for the whole layer are
    /// [`RateLimitLayerBuilder::exempt`](super::RateLimitLayerBuilder::exempt).
    ///
    /// A limit with exemptions is decided apart from the others of the set: see
    /// [`shadow`](Self::shadow) for the order (enforcing limits first). When another
    /// enforcing limit refuses a request this one admitted, this one gives its units back at
    /// once; until then they are held, which may refuse a concurrent request a moment
    /// early, never admit one too many.
    pub fn exempt(mut self, exemptions: Exemptions) -> Self {
        self.exempt = (!exemptions.is_empty()).then_some(exemptions);
        self
    }

    /// The limit.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }
}

impl From<Limit> for LayerLimit {
    fn from(limit: Limit) -> Self {
        LayerLimit::new(limit)
    }
}

/// Who decides the set (or one group of it).
#[derive(Clone)]
pub(crate) enum SetBackend {
    Local(LocalPolicy),
    #[cfg(feature = "redis-tokio")]
    Redis(crate::redis::RedisPolicy),
    /// Decided from memory in the call, like the local provider.
    #[cfg(feature = "redis-tokio")]
    Hybrid(crate::hybrid::HybridPolicy),
}

/// A boxed set decision from Redis.
#[cfg(feature = "redis-tokio")]
pub(crate) type SetFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<SetDone, Error>> + Send + 'static>>;

/// A layer's limit set: the keys, the decider, and the fields' fixed parts.
pub(crate) struct SetEngine {
    /// The distinct key extractors; limit `i` counts by `extractors[key_of[i]]`.
    extractors: Box<[Arc<dyn KeyExtractor>]>,
    key_of: [u8; MAX_LIMITS],
    len: usize,
    /// Per limit: its count resolver, if it has one.
    resolvers: Box<[Option<Arc<CountFn>>]>,
    /// Per limit: its own count (the one used without a resolver).
    counts: [f64; MAX_LIMITS],
    /// Whether any limit resolves its count per request.
    resolved: bool,
    /// The groups decided apart (one, the whole set, unless a limit is shadowed or has
    /// exemptions: `set_ops.rs`).
    groups: Arc<[Group]>,
    /// Whether the set is split into groups.
    split: bool,
    /// Policy names, in the set's order.
    pub(super) names: Box<[Box<str>]>,
    /// Each policy's window, seconds.
    windows: [u64; MAX_LIMITS],
    /// `RateLimit-Policy`, every policy of the set.
    policy: HeaderValue,
    suppressed: bool,
}

impl std::fmt::Debug for SetEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetEngine")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SetEngine {
    pub(crate) fn new(
        limiter: &Arc<RateLimiter>,
        provider: Provider,
        default_key: Arc<dyn KeyExtractor>,
        limits: Vec<LayerLimit>,
        cost: &CostSource,
        metrics: bool,
    ) -> Result<Self, Error> {
        let set = LimitSet::new(limits.iter().map(|l| l.limit.clone()))?;
        if let CostSource::Fixed(c) = cost {
            if *c == 0 {
                return Err(Error::ZeroCount);
            }
            // Only fixed quotas can be checked now; a resolved one may be larger.
            if let Some(l) = set
                .iter()
                .zip(&limits)
                .filter(|(_, ll)| ll.count.is_none())
                .map(|(l, _)| l)
                .find(|l| !capacity::fits(*c, l.quota().count()))
            {
                return Err(Error::invalid(
                    "RateLimitLayer cost",
                    format!("{c} (limit {l})"),
                    "must not exceed the quota of any limit of the layer",
                ));
            }
        }
        let mut extractors: Vec<Arc<dyn KeyExtractor>> = Vec::new();
        let mut default_at = None;
        let mut key_of = [0u8; MAX_LIMITS];
        for (i, l) in limits.iter().enumerate() {
            key_of[i] = match &l.key {
                Some(own) => {
                    extractors.push(own.clone());
                    (extractors.len() - 1) as u8
                }
                None => *default_at.get_or_insert_with(|| {
                    extractors.push(default_key.clone());
                    (extractors.len() - 1) as u8
                }),
            };
        }
        let mut windows = [0u64; MAX_LIMITS];
        let mut counts = [0.0f64; MAX_LIMITS];
        for (i, l) in set.iter().enumerate() {
            windows[i] = l.quota().window_seconds();
            counts[i] = l.quota().count();
        }
        let names: Box<[Box<str>]> = set.iter().map(|l| Box::from(l.name())).collect();
        let policy = policy_list(&names, &windows, &counts[..set.len()], ALL);
        let resolvers: Box<[Option<Arc<CountFn>>]> =
            limits.iter().map(|l| l.count.clone()).collect();
        let resolved = resolvers.iter().any(Option::is_some);
        let len = set.len();
        let suppressed = set
            .iter()
            .any(|l| l.strategy() == crate::Strategy::Suppressed);
        let backend_of = |set: LimitSet| -> Result<SetBackend, Error> {
            Ok(match provider {
                Provider::Local => SetBackend::Local(limiter.local().policy(set)),
                #[cfg(feature = "redis-tokio")]
                Provider::Redis => SetBackend::Redis(limiter.redis().policy(set)?),
                #[cfg(feature = "redis-tokio")]
                Provider::Hybrid => SetBackend::Hybrid(limiter.hybrid().policy(set)?),
            })
        };
        // The groups (set_ops.rs): the enforcing limits without exemptions, each enforcing
        // one with exemptions, the shadow ones without, each shadow one with.
        let split = limits.iter().any(|l| l.shadow || l.exempt.is_some());
        let mut parts: Vec<Vec<usize>> = Vec::new();
        for shadow in [false, true] {
            let plain: Vec<usize> = (0..len)
                .filter(|i| limits[*i].shadow == shadow && limits[*i].exempt.is_none())
                .collect();
            if !plain.is_empty() {
                parts.push(plain);
            }
            parts.extend(
                (0..len)
                    .filter(|i| limits[*i].shadow == shadow && limits[*i].exempt.is_some())
                    .map(|i| vec![i]),
            );
        }
        let mut groups = Vec::with_capacity(parts.len());
        for members in parts {
            let sub = if split {
                LimitSet::new(members.iter().map(|i| set.limits()[*i].clone()))?
            } else {
                set.clone()
            };
            let first = &limits[members[0]];
            #[cfg(feature = "metrics")]
            let counters = members
                .iter()
                .map(|i| {
                    let l = &limits[*i];
                    (metrics && (l.shadow || l.exempt.is_some()))
                        .then(|| crate::observe::LimitCounters::new(&names[*i]))
                })
                .collect();
            groups.push(Group {
                backend: backend_of(sub)?,
                key_idx: members.iter().map(|i| usize::from(key_of[*i])).collect(),
                names: members.iter().map(|i| Arc::from(&*names[*i])).collect(),
                shadow: first.shadow,
                exempt: first.exempt.clone(),
                #[cfg(feature = "metrics")]
                counters,
                members: members.into(),
            });
        }
        #[cfg(not(feature = "metrics"))]
        let _ = metrics;
        Ok(SetEngine {
            extractors: extractors.into(),
            key_of,
            len,
            resolvers,
            counts,
            resolved,
            groups: groups.into(),
            split,
            names,
            windows,
            policy,
            suppressed,
        })
    }

    /// The backend of a set decided whole.
    fn backend(&self) -> &SetBackend {
        &self.groups[0].backend
    }

    /// Whether a limit of the set is suppressed (its factor header is pre-built).
    pub(crate) fn any_suppressed(&self) -> bool {
        self.suppressed
    }

    /// Whether every limit counts by one key.
    fn one_key(&self) -> bool {
        self.extractors.len() == 1
    }

    /// Each extractor's key, or the first failure.
    fn keys(
        &self,
        engine: &DecisionEngine,
        head: &RequestHead<'_>,
    ) -> Result<[Option<Key>; MAX_LIMITS], Verdict> {
        let mut keys: [Option<Key>; MAX_LIMITS] = Default::default();
        for (slot, ex) in keys.iter_mut().zip(self.extractors.iter()) {
            let key = ex.extract(head).map_err(|e| engine.key_failure(&e))?;
            engine.check_key_len(&key)?;
            *slot = Some(key);
        }
        Ok(keys)
    }

    /// The key limit `i` counts by.
    fn key<'k>(&self, keys: &'k [Option<Key>], i: usize) -> &'k Key {
        keys[usize::from(self.key_of[i])]
            .as_ref()
            .expect("every extractor ran")
    }

    /// This request's quota count per limit, where any limit resolves its own.
    fn resolve_counts(
        &self,
        keys: &[Option<Key>],
        head: &RequestHead<'_>,
    ) -> Option<[f64; MAX_LIMITS]> {
        if !self.resolved {
            return None;
        }
        let mut counts = self.counts;
        for (i, r) in self.resolvers.iter().enumerate() {
            if let Some(resolve) = r {
                counts[i] = resolve(self.key(keys, i), head);
            }
        }
        Some(counts)
    }

    /// Limit `i`'s whole units of quota for this request (the near-limit count).
    fn quota_of(&self, i: usize, counts: Option<&[f64; MAX_LIMITS]>) -> u64 {
        headers::quota_of_count(counts.unwrap_or(&self.counts)[i])
    }

    /// `RateLimit-Policy`: the pre-built one, or this request's counts, of the policies
    /// in `visible`.
    fn policy(&self, counts: Option<&[f64; MAX_LIMITS]>, visible: u16) -> HeaderValue {
        let all = visible & self.all() == self.all();
        match counts {
            None if all => self.policy.clone(),
            c => policy_list(
                &self.names,
                &self.windows,
                &c.unwrap_or(&self.counts)[..self.len],
                visible,
            ),
        }
    }

    /// The mask of every position of the set.
    fn all(&self) -> u16 {
        (1u16 << self.len) - 1
    }

    /// `RateLimit`: the remaining quota of every policy in `visible`, and `t` where it is
    /// meaningful.
    fn ratelimit(&self, d: &SetDecision, visible: u16) -> HeaderValue {
        let refused = d.outcome() != Outcome::Allowed;
        list_value(
            d.limits()
                .iter()
                .enumerate()
                .filter(|(i, _)| visible & (1 << i) != 0)
                .map(|(i, s)| {
                    let name = &self.names[i];
                    if !refused {
                        let t = s.reset_ms.div_ceil(1000).min(self.windows[i]);
                        format!("\"{name}\";r={};t={t}", s.remaining)
                    } else if s.refused {
                        let t = headers::retry_after_seconds(s.reset_ms, self.windows[i]);
                        format!("\"{name}\";r={};t={t}", s.remaining)
                    } else {
                        format!("\"{name}\";r={}", s.remaining)
                    }
                }),
        )
    }

    /// `Retry-After` of a refusal: the longest wait of the refusing policies, each capped
    /// at its window.
    fn retry_after_seconds(&self, d: &SetDecision) -> u64 {
        d.limits()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.refused)
            .map(|(i, s)| headers::retry_after_seconds(s.reset_ms, self.windows[i]))
            .max()
            .unwrap_or(1)
    }

    fn violated_mask(d: &SetDecision) -> u16 {
        d.refused().fold(0u16, |m, i| m | (1 << i))
    }
}

/// `"name";q=<count>;w=<window>, ...`, of the policies in `visible`.
fn policy_list(names: &[Box<str>], windows: &[u64], counts: &[f64], visible: u16) -> HeaderValue {
    list_value(
        names
            .iter()
            .zip(windows)
            .zip(counts)
            .enumerate()
            .filter(|(i, _)| visible & (1 << i) != 0)
            .map(|(_, ((n, w), c))| format!("\"{n}\";q={};w={w}", headers::quota_of_count(*c))),
    )
}

/// A structured-field list of the items.
fn list_value(items: impl Iterator<Item = String>) -> HeaderValue {
    let mut out = String::with_capacity(64);
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item);
    }
    HeaderValue::try_from(out).expect("digits, quotes and validated names are valid header text")
}

impl DecisionEngine {
    /// Decides one request under the layer's set.
    pub(super) fn check_set(&self, set: &SetEngine, head: &RequestHead<'_>) -> Verdict {
        let keys = match set.keys(self, head) {
            Ok(keys) => keys,
            Err(verdict) => return verdict,
        };
        if keys.iter().flatten().any(|k| self.ops.exempts_key(k)) {
            return self.ops.exempt();
        }
        let cost = self.resolve_cost(head);
        let counts = set.resolve_counts(&keys, head);
        if set.split {
            return self.check_split(set, head, &keys, counts, cost);
        }
        let before_ms = if self.ops.counting.is_some() {
            set.groups[0].now_ms()
        } else {
            0
        };
        let whole = move |d: SetDecision| SetDone {
            decision: d,
            visible: ALL,
            counted: 1,
            before_ms,
            cost,
        };
        match set.backend() {
            SetBackend::Local(policy) => {
                let result = if set.one_key() && counts.is_none() {
                    policy.inc(set.key(&keys, 0).as_str(), cost)
                } else {
                    let mut strs = [""; MAX_LIMITS];
                    for (i, s) in strs.iter_mut().enumerate().take(set.len) {
                        *s = set.key(&keys, i).as_str();
                    }
                    match &counts {
                        Some(c) => policy.inc_with(&strs[..set.len], &c[..set.len], cost),
                        None => policy.inc_each(&strs[..set.len], cost),
                    }
                };
                match result {
                    Ok(d) => self.set_verdict(set, &whole(d), &keys, counts.as_ref()),
                    Err(err) => self.misconfigured(&err),
                }
            }
            #[cfg(feature = "redis-tokio")]
            SetBackend::Hybrid(policy) => {
                let result = hybrid_set_inc(set, policy, &keys, counts.as_ref(), cost);
                match result {
                    Ok(d) => self.set_verdict(set, &whole(d), &keys, counts.as_ref()),
                    Err(err) => self.failed(err),
                }
            }
            #[cfg(feature = "redis-tokio")]
            SetBackend::Redis(policy) => {
                let owned = set.owned_keys(&keys);
                let decision = redis_set_inc(set, policy, &owned, counts, cost, whole);
                self.await_set(decision, owned, counts)
            }
        }
    }

    /// A Redis set decision: ready at once (an error), or awaited.
    #[cfg(feature = "redis-tokio")]
    fn await_set(
        &self,
        decision: SetFuture,
        owned: Box<[Key]>,
        counts: Option<[f64; MAX_LIMITS]>,
    ) -> Verdict {
        let mut decision = self.ops.timed(decision);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match decision.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => self.finish_set(result, &owned, counts),
            std::task::Poll::Pending => Verdict::Awaiting(Box::new(super::decide::Pending::Set(
                decision, owned, counts,
            ))),
        }
    }

    /// A set split into groups by shadowed or exempted limits (`set_ops.rs`).
    #[cold]
    fn check_split(
        &self,
        set: &SetEngine,
        head: &RequestHead<'_>,
        keys: &[Option<Key>],
        counts: Option<[f64; MAX_LIMITS]>,
        cost: u64,
    ) -> Verdict {
        let owned = set.owned_keys(keys);
        let mut exempt = 0u16;
        for (g, group) in set.groups.iter().enumerate() {
            if group.exempts(head, &owned) {
                exempt |= 1 << g;
            }
        }
        if exempt != 0 {
            if exempt.count_ones() as usize == set.groups.len() {
                for group in set.groups.iter() {
                    group.count(0, crate::observe::Outcome::Exempt);
                }
                return self.ops.exempt();
            }
            for (g, group) in set.groups.iter().enumerate() {
                if exempt & (1 << g) != 0 {
                    group.count(0, crate::observe::Outcome::Exempt);
                }
            }
        }
        #[cfg(feature = "redis-tokio")]
        if let SetBackend::Redis(_) = set.backend() {
            let groups = set.groups.clone();
            let keys = owned.clone();
            let len = set.len;
            let decision: SetFuture = Box::pin(async move {
                run_groups(&groups, len, &keys, exempt, cost, |g| {
                    g.decide_async(&keys, counts.as_ref(), cost)
                })
                .await
            });
            return self.await_set(decision, owned, counts);
        }
        let decision = run_groups(&set.groups, set.len, &owned, exempt, cost, |g| {
            std::future::ready(g.decide_sync(&owned, counts.as_ref(), cost))
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(result) = std::pin::pin!(decision).poll(&mut cx) else {
            unreachable!("the local and hybrid groups decide at once");
        };
        match result {
            Ok(done) => self.set_verdict(set, &done, keys, counts.as_ref()),
            Err(err @ (Error::CapacityBelowOne { .. } | Error::InvalidValue { .. })) => {
                self.misconfigured(&err)
            }
            Err(err) => self.failed(err),
        }
    }

    /// Turns a networked set decision into a verdict; `keys` are the extractors' keys.
    #[cfg(feature = "redis-tokio")]
    pub(super) fn finish_set(
        &self,
        result: Result<SetDone, Error>,
        keys: &[Key],
        counts: Option<[f64; MAX_LIMITS]>,
    ) -> Verdict {
        let set = self
            .set
            .as_deref()
            .expect("a set decision comes from a set layer");
        match result {
            Ok(done) => {
                let mut slots: [Option<Key>; MAX_LIMITS] = Default::default();
                for (slot, k) in slots.iter_mut().zip(keys) {
                    *slot = Some(k.clone());
                }
                self.set_verdict(set, &done, &slots, counts.as_ref())
            }
            Err(err) => self.failed(err),
        }
    }

    /// The verdict of a set decision.
    fn set_verdict(
        &self,
        set: &SetEngine,
        done: &SetDone,
        keys: &[Option<Key>],
        counts: Option<&[f64; MAX_LIMITS]>,
    ) -> Verdict {
        let d = &done.decision;
        let visible = done.visible & set.all();
        match d.outcome() {
            Outcome::Allowed => {
                let shown = || {
                    d.limits()
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| visible & (1 << i) != 0)
                };
                let raw_factor = shown()
                    .map(|(_, s)| s.suppression_factor)
                    .fold(0.0, f64::max);
                let factor = (self.factor_on_allowed && raw_factor > 0.0)
                    .then(|| self.prebuilt_factor(raw_factor));
                let fields = if (!self.headers_on_allowed || visible == 0) && factor.is_none() {
                    AdmittedHeaders::none()
                } else {
                    let (policy, ratelimit) = if self.headers_on_allowed && visible != 0 {
                        (
                            Some(set.policy(counts, visible)),
                            Some(set.ratelimit(d, visible)),
                        )
                    } else {
                        (None, None)
                    };
                    AdmittedHeaders::with(policy, ratelimit, factor)
                };
                // The tightest limit (the largest share of its quota used) for the near-limit
                // count and the handler's decision.
                let tightest = shown()
                    .map(|(i, s)| (s.remaining, set.quota_of(i, counts)))
                    .max_by(|a, b| {
                        let used = |(left, q): (u64, u64)| {
                            q.saturating_sub(left) as f64 / (q.max(1) as f64)
                        };
                        used(*a).total_cmp(&used(*b))
                    });
                let key = set.key(keys, 0);
                let units = || {
                    Some(SetUnits {
                        groups: set.groups.clone(),
                        keys: set.owned_keys(keys),
                        counted: done.counted,
                    })
                };
                self.admitted_with(
                    fields,
                    key,
                    super::ops::Standing {
                        left: tightest.map(|t| t.0),
                        quota: tightest.map(|t| t.1),
                        factor: raw_factor,
                    },
                    done.cost,
                    done.before_ms,
                    units,
                )
            }
            outcome => {
                let seconds = set.retry_after_seconds(d);
                let mask = SetEngine::violated_mask(d);
                let first = d.refused().next().unwrap_or(0);
                let key = set.key(keys, first);
                let violated = ViolatedPolicies::new(&set.names, mask);
                let factor = d
                    .limits()
                    .iter()
                    .filter(|s| s.refused)
                    .map(|s| s.suppression_factor)
                    .fold(0.0, f64::max);
                let rejection = if outcome == Outcome::Shed {
                    Rejection::Suppressed {
                        key,
                        suppression_factor: factor,
                        retry_after_seconds: seconds,
                        violated,
                    }
                } else {
                    Rejection::RateLimited {
                        key,
                        retry_after_seconds: seconds,
                        violated,
                    }
                };
                let mut response: Response<bytes::Bytes> = self.body.build(&rejection);
                let h = response.headers_mut();
                if !h.contains_key(header::RETRY_AFTER) {
                    h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                if !h.contains_key(RATELIMIT_POLICY) {
                    h.insert(RATELIMIT_POLICY, set.policy(counts, visible));
                }
                if !h.contains_key(RATELIMIT) {
                    h.insert(RATELIMIT, set.ratelimit(d, visible));
                }
                if outcome == Outcome::Shed && !h.contains_key(SUPPRESSION_FACTOR) {
                    h.insert(SUPPRESSION_FACTOR, self.prebuilt_factor(factor));
                }
                let outcome = if outcome == Outcome::Shed {
                    crate::observe::Outcome::Shed
                } else {
                    crate::observe::Outcome::Rejected
                };
                self.refused_outcome(outcome, &set.names[first], key, Box::new(response))
            }
        }
    }
}

impl SetEngine {
    /// The extractors' keys, owned.
    fn owned_keys(&self, keys: &[Option<Key>]) -> Box<[Key]> {
        keys[..self.extractors.len()]
            .iter()
            .map(|k| k.clone().expect("every extractor ran"))
            .collect()
    }
}

/// The hybrid set decision: synchronous, no I/O.
#[cfg(feature = "redis-tokio")]
fn hybrid_set_inc(
    set: &SetEngine,
    policy: &crate::hybrid::HybridPolicy,
    keys: &[Option<Key>],
    counts: Option<&[f64; MAX_LIMITS]>,
    cost: u64,
) -> Result<SetDecision, Error> {
    let redis_keys = keys[..set.extractors.len()]
        .iter()
        .map(|k| super::provider::redis_key(k.as_ref().expect("every extractor ran")))
        .collect::<Result<Vec<_>, Error>>()?;
    let refs: Vec<_> = set.key_of[..set.len]
        .iter()
        .map(|k| &redis_keys[usize::from(*k)])
        .collect();
    match counts {
        Some(c) => policy.inc_with(&refs, &c[..set.len], cost),
        None if redis_keys.len() == 1 => policy.inc(&redis_keys[0], cost),
        None => policy.inc_each(&refs, cost),
    }
}

/// The Redis set decision for the extractors' `keys`, as a `'static` future.
#[cfg(feature = "redis-tokio")]
fn redis_set_inc(
    set: &SetEngine,
    policy: &crate::redis::RedisPolicy,
    keys: &[Key],
    counts: Option<[f64; MAX_LIMITS]>,
    cost: u64,
    done: impl FnOnce(SetDecision) -> SetDone + Send + 'static,
) -> SetFuture {
    let redis_keys: Result<Vec<_>, Error> = keys.iter().map(super::provider::redis_key).collect();
    let redis_keys = match redis_keys {
        Ok(k) => k,
        Err(err) => return Box::pin(std::future::ready(Err(err))),
    };
    let policy = policy.clone();
    let key_of: Vec<usize> = set.key_of[..set.len]
        .iter()
        .map(|k| usize::from(*k))
        .collect();
    Box::pin(async move {
        let refs: Vec<_> = key_of.iter().map(|k| &redis_keys[*k]).collect();
        let d = match counts {
            Some(c) => policy.inc_with(&refs, &c[..refs.len()], cost).await,
            None if redis_keys.len() == 1 => policy.inc(&redis_keys[0], cost).await,
            None => policy.inc_each(&refs, cost).await,
        };
        d.map(done)
    })
}
