//! [`RateLimitService`]: decides each request, then calls the inner service or answers.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::ResponseBody;
use super::config::{Shared, Verdict};
use super::extract::RequestHead;
use super::future::ResponseFuture;

/// The service [`RateLimitLayer`](super::RateLimitLayer) wraps around another.
#[derive(Debug)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for RateLimitService<S> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> RateLimitService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        RateLimitService { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self.shared.check(&RequestHead::from(&req)) {
            // Decided synchronously: `self.inner` is the service that was polled ready.
            Verdict::Pass(note) => ResponseFuture::inner(self.inner.call(req), note),
            Verdict::Reject(response) => ResponseFuture::reply(response),
            Verdict::Pending(decision, pending) => {
                // The decision takes a round trip: move the ready service into the future
                // and leave a fresh clone, which must be polled ready before its own call.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::pending(decision, pending, ready, req, self.shared.clone())
            }
        }
    }
}
