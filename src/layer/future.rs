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
            response: ColdBox<Response<Bytes>>,
        },
        Deciding {
            // Boxed: it holds the request and a service, and only networked providers
            // (already a round trip) take this path; the local path's future stays small.
            deciding: ColdBox<Deciding<S, ReqBody>>,
        },
    }
}

/// A box dropped out of line: the state's drop glue, run on every request, then holds the
/// common path's drops only (the inner future, and fields that are none), not the inlined
/// drops of a request, a service and a response.
struct ColdBox<T>(Option<Box<T>>);

impl<T> ColdBox<T> {
    fn new(value: T) -> Self {
        ColdBox(Some(Box::new(value)))
    }

    fn get_mut(&mut self) -> &mut T {
        self.0
            .as_mut()
            .expect("ResponseFuture polled after completion")
    }
}

impl<T> Drop for ColdBox<T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            drop_out_of_line(value);
        }
    }
}

/// Drops `value` in a function of its own.
#[inline(never)]
pub(super) fn drop_out_of_line<T>(value: T) {
    drop(value);
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
                response: ColdBox(Some(response)),
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
                deciding: ColdBox::new(Deciding {
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        // The common path, with nothing else in this frame: nothing to add, the response
        // handed on as the inner future returns it (no copy between its output and ours).
        if let StateProj::Inner { future, fields } = state.as_mut().project() {
            if fields.is_none() {
                return M::poll_response(future, cx);
            }
        }
        poll_other::<S, ReqBody, ResBody, M>(state, cx)
    }
}

/// [`ResponseFuture::poll`] but for an inner future with nothing to add: out of line, so
/// the common path's frame holds none of this.
#[inline(never)]
fn poll_other<S, ReqBody, ResBody, M>(
    mut state: Pin<&mut State<S, ReqBody>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<M::Body>, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: BodyMode<ResBody>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Inner { future, fields } => {
                if fields.is_none() {
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
                    .0
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
                } = deciding.get_mut();
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
                        response: ColdBox(Some(engine.ops.answer(response))),
                    },
                    Verdict::Awaiting(..) => unreachable!("a finished decision is final"),
                };
                state.set(next);
            }
        }
    }
}
