//! [`ResponseFuture`]: the inner service's future, the layer's own answer, or a decision
//! still on its way from a networked provider.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{BodyMode, Wrapped};
use super::decide::{DecisionEngine, Pending, Verdict};
use super::fields::AdmittedHeaders;

pin_project! {
    /// The future of [`RateLimitService`](super::RateLimitService).
    pub struct ResponseFuture<S, ReqBody, M = Wrapped>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Inner {
            #[pin]
            future: S::Future,
            fields: AdmittedHeaders,
        },
        Reply {
            response: Option<Box<Response<Bytes>>>,
        },
        Deciding {
            // Boxed: it holds the request and a service, and only networked providers
            // (already a round trip) take this path; the local path's future stays small.
            deciding: Box<Deciding<S, ReqBody>>,
        },
    }
}

struct Deciding<S, ReqBody> {
    pending: Box<Pending>,
    service: Option<S>,
    request: Option<Request<ReqBody>>,
    engine: Arc<DecisionEngine>,
}

impl<S, ReqBody, M> ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>>,
{
    /// The inner service's future, with `fields` to add to its response.
    #[inline]
    pub(crate) fn inner(future: S::Future, fields: AdmittedHeaders) -> Self {
        ResponseFuture {
            state: State::Inner { future, fields },
            mode: PhantomData,
        }
    }

    pub(crate) fn reply(response: Box<Response<Bytes>>) -> Self {
        ResponseFuture {
            state: State::Reply {
                response: Some(response),
            },
            mode: PhantomData,
        }
    }

    pub(crate) fn awaiting(
        pending: Box<Pending>,
        service: S,
        request: Request<ReqBody>,
        engine: Arc<DecisionEngine>,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                deciding: Box::new(Deciding {
                    pending,
                    service: Some(service),
                    request: Some(request),
                    engine,
                }),
            },
            mode: PhantomData,
        }
    }
}

impl<S, ReqBody, ResBody, M> Future for ResponseFuture<S, ReqBody, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: BodyMode<ResBody>,
{
    type Output = Result<Response<M::Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, fields } => {
                    if fields.is_none() {
                        // The common path: nothing to add, the response handed on as the
                        // inner future returns it (no copy between its output and ours).
                        return M::poll_response(future, cx);
                    }
                    // The inner poll's result is handed on in place (the response is a
                    // hundred bytes: taken out and put back it would be copied twice).
                    let mut polled = future.poll(cx);
                    if let Poll::Ready(Ok(response)) = &mut polled {
                        fields.settle(response.status(), response.headers());
                        std::mem::take(fields).apply(response.headers_mut());
                    }
                    return polled.map_ok(M::response);
                }
                StateProj::Reply { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok((*response).map(M::full)));
                }
                StateProj::Deciding { deciding } => {
                    let Deciding {
                        pending,
                        service,
                        request,
                        engine,
                    } = &mut **deciding;
                    let next = match ready!(pending.poll(cx, engine)) {
                        Verdict::Pass(mut fields) => {
                            let mut service = service
                                .take()
                                .expect("ResponseFuture polled after completion");
                            let mut request = request
                                .take()
                                .expect("ResponseFuture polled after completion");
                            if let Some(info) = fields.take_info() {
                                request.extensions_mut().insert(info);
                            }
                            State::Inner {
                                future: service.call(request),
                                fields,
                            }
                        }
                        Verdict::Reject(response) => State::Reply {
                            response: Some(engine.ops.answer(response)),
                        },
                        Verdict::Awaiting(..) => unreachable!("a finished decision is final"),
                    };
                    state.set(next);
                }
            }
        }
    }
}
