//! [`RateLimitService`]: decides each request, then calls the inner service or answers.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::{BodyMode, Wrapped};
use super::decide::{DecisionEngine, Verdict};
use super::extract::RequestHead;
use super::future::ResponseFuture;

/// The service [`RateLimitLayer`](super::RateLimitLayer) wraps around another.
/// `M` is the [`BodyMode`]: how the responses' bodies are typed.
pub struct RateLimitService<S, M = Wrapped> {
    inner: S,
    engine: Arc<DecisionEngine>,
    mode: PhantomData<fn() -> M>,
}

impl<S: std::fmt::Debug, M> std::fmt::Debug for RateLimitService<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("engine", &self.engine)
            .finish()
    }
}

impl<S: Clone, M> Clone for RateLimitService<S, M> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            engine: self.engine.clone(),
            mode: PhantomData,
        }
    }
}

impl<S, M> RateLimitService<S, M> {
    pub(crate) fn new(inner: S, engine: Arc<DecisionEngine>) -> Self {
        RateLimitService {
            inner,
            engine,
            mode: PhantomData,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody, M> Service<Request<ReqBody>> for RateLimitService<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    M: BodyMode<ResBody>,
{
    type Response = Response<M::Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.engine.check(&RequestHead::from(&req)) {
            // The common path: admitted with nothing to add or hand on; `self.inner` is the
            // service that was polled ready.
            Verdict::Pass(fields) if fields.is_none() => {
                ResponseFuture::inner(self.inner.call(req), fields)
            }
            verdict => self.call_other(verdict, req),
        }
    }
}

impl<S, M> RateLimitService<S, M> {
    /// [`call`](Service::call) for every verdict but an admission with nothing to add: out
    /// of line, so the common path's frame holds none of this.
    #[inline(never)]
    fn call_other<ReqBody, ResBody>(
        &mut self,
        verdict: Verdict,
        mut req: Request<ReqBody>,
    ) -> ResponseFuture<S, ReqBody, M>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
        M: BodyMode<ResBody>,
    {
        match verdict {
            // Decided synchronously: `self.inner` is the service that was polled ready.
            Verdict::Pass(mut fields) => {
                if let Some(info) = fields.take_info() {
                    req.extensions_mut().insert(info);
                }
                ResponseFuture::inner(self.inner.call(req), fields)
            }
            Verdict::Reject(response) => ResponseFuture::reply(self.engine.ops.answer(response)),
            Verdict::Awaiting(pending) => {
                // The decision takes a round trip: move the ready service into the future
                // and leave a fresh clone, which must be polled ready before its own call.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::awaiting(pending, ready, req, self.engine.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use tower::{Layer, Service, ServiceExt};

    #[cfg(feature = "redis-tokio")]
    use crate::Error;
    use crate::Strategy;
    use crate::layer::Key;
    #[cfg(feature = "redis-tokio")]
    use crate::layer::ProviderErrorPolicy;
    use crate::layer::RateLimitLayer;
    use crate::layer::provider::{AsyncProvider, DecisionFuture};
    use crate::local::LocalRateLimiterOptions;
    use crate::{ManualClock, RateLimit, RateLimiter, RateLimiterBuilder};

    /// Answers from the local limiter after one trip through the executor, like a network
    /// provider would.
    struct Deferred(Arc<RateLimiter>);

    impl AsyncProvider for Deferred {
        fn inc(&self, key: &Key, rate: RateLimit, cost: u64) -> DecisionFuture {
            let (rl, key) = (self.0.clone(), key.clone());
            Box::pin(async move {
                tokio::task::yield_now().await;
                rl.local()
                    .absolute()
                    .try_inc(key.as_str(), &rate, cost)
                    .map(|d| (d, None))
            })
        }
    }

    /// Always times out, like an unreachable Redis.
    #[cfg(feature = "redis-tokio")]
    struct Down;

    #[cfg(feature = "redis-tokio")]
    impl AsyncProvider for Down {
        fn inc(&self, _: &Key, _: RateLimit, _: u64) -> DecisionFuture {
            Box::pin(async {
                tokio::task::yield_now().await;
                Err(Error::RedisTimeout { timeout_ms: 50 })
            })
        }
    }

    /// Panics when called without a `poll_ready` first; a clone starts unready.
    struct Strict {
        ready: bool,
    }

    impl Clone for Strict {
        fn clone(&self) -> Self {
            Strict { ready: false }
        }
    }

    impl Service<Request<()>> for Strict {
        type Response = Response<Bytes>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            assert!(self.ready, "called a service that was not polled ready");
            self.ready = false;
            Box::pin(async { Ok(Response::new(Bytes::from_static(b"ok"))) })
        }
    }

    fn limiter() -> Arc<RateLimiter> {
        Arc::new(
            RateLimiterBuilder::new(LocalRateLimiterOptions {
                window_size_seconds: 10.try_into().unwrap(),
                rate_group_size_ms: 100.try_into().unwrap(),
                hard_limit_factor: Default::default(),
                suppression_factor_cache_ms: Default::default(),
            })
            .clock(ManualClock::new(0))
            .build()
            .unwrap(),
        )
    }

    fn request() -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert("192.0.2.1:5000".parse::<SocketAddr>().unwrap());
        req
    }

    fn builder(rl: &Arc<RateLimiter>) -> crate::layer::RateLimitLayerBuilder {
        RateLimitLayer::builder(rl.clone())
            .rate(RateLimit::try_from(0.2).unwrap())
            .strategy(Strategy::Absolute)
    }

    #[tokio::test]
    async fn an_async_decision_calls_the_service_that_was_polled_ready() {
        let rl = limiter();
        let layer = builder(&rl)
            .async_provider(Arc::new(Deferred(rl.clone())))
            .build()
            .unwrap();
        let mut svc = layer.layer(Strict { ready: false });
        for _ in 0..2 {
            let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(resp.headers().contains_key(http::header::RETRY_AFTER));
        assert_eq!(rl.local().absolute().usage("192.0.2.1"), 2);
    }

    #[cfg(feature = "redis-tokio")]
    #[tokio::test]
    async fn provider_failures_fail_open_by_default_and_are_counted() {
        let rl = limiter();
        let layer = builder(&rl).async_provider(Arc::new(Down)).build().unwrap();
        let mut svc = layer.layer(Strict { ready: false });
        for _ in 0..5 {
            let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
        assert_eq!(layer.provider_errors(), 5);
    }

    #[cfg(feature = "redis-tokio")]
    #[tokio::test]
    async fn provider_failures_can_fail_closed() {
        let rl = limiter();
        let layer = builder(&rl)
            .async_provider(Arc::new(Down))
            .on_provider_error(ProviderErrorPolicy::FailClosed)
            .build()
            .unwrap();
        let resp = layer
            .layer(Strict { ready: false })
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(layer.provider_errors(), 1);
    }

    #[tokio::test]
    async fn the_local_path_calls_the_inner_service_in_place() {
        let rl = limiter();
        let mut svc = builder(&rl).build().unwrap().layer(Strict { ready: false });
        for _ in 0..2 {
            let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
}
