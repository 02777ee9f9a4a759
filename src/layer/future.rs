//! [`ResponseFuture`]: the inner service's future, the layer's own answer, or a decision
//! still on its way from a networked provider.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::config::{Note, Pending, Shared, Verdict};
use super::provider::DecisionFuture;

pin_project! {
    /// The future of [`RateLimitService`](super::RateLimitService).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
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
            note: Note,
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
    decision: DecisionFuture,
    pending: Pending,
    service: Option<S>,
    request: Option<Request<ReqBody>>,
    shared: Arc<Shared>,
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn inner(future: S::Future, note: Note) -> Self {
        ResponseFuture {
            state: State::Inner { future, note },
        }
    }

    pub(crate) fn reply(response: Box<Response<Bytes>>) -> Self {
        ResponseFuture {
            state: State::Reply {
                response: Some(response),
            },
        }
    }

    pub(crate) fn pending(
        decision: DecisionFuture,
        pending: Pending,
        service: S,
        request: Request<ReqBody>,
        shared: Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                deciding: Box::new(Deciding {
                    decision,
                    pending,
                    service: Some(service),
                    request: Some(request),
                    shared,
                }),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Inner { future, note } => {
                    let mut response = ready!(future.poll(cx))?;
                    std::mem::take(note).apply(response.headers_mut());
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Reply { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok((*response).map(ResponseBody::full)));
                }
                StateProj::Deciding { deciding } => {
                    let Deciding {
                        decision,
                        pending,
                        service,
                        request,
                        shared,
                    } = &mut **deciding;
                    let result = ready!(decision.as_mut().poll(cx));
                    let next = match shared.finish(result, pending) {
                        Verdict::Pass(note) => {
                            let mut service = service
                                .take()
                                .expect("ResponseFuture polled after completion");
                            let request = request
                                .take()
                                .expect("ResponseFuture polled after completion");
                            State::Inner {
                                future: service.call(request),
                                note,
                            }
                        }
                        Verdict::Reject(response) => State::Reply {
                            response: Some(response),
                        },
                        Verdict::Pending(..) => unreachable!("a finished decision is final"),
                    };
                    state.set(next);
                }
            }
        }
    }
}
