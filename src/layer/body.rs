//! The layer's response body: the inner service's body, or the layer's own answer, typed
//! by the layer's [`BodyMode`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a body the layer wrote itself (a 429, a 503, a
    /// key-extraction error). Its data type is the inner body's, so it works wherever the
    /// inner body did, plain hyper included.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body of `data`, sent in one frame.
    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d.into())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => write!(
                f,
                "ResponseBody::Full({} bytes)",
                data.as_ref().map_or(0, |d| d.len())
            ),
        }
    }
}

/// How a layer types its responses' bodies, chosen on
/// [`RateLimitLayer`](super::RateLimitLayer): [`Wrapped`] (the default, any inner body) or
/// `AxumBody` (feature `axum`). Sealed.
pub trait BodyMode<B>: sealed::Sealed {
    /// The body of the layer's responses when the inner service's body is `B`.
    type Body;
    /// The inner service's body, as the layer's.
    fn inner(body: B) -> Self::Body;
    /// The inner service's response, as the layer's: its body through [`inner`](Self::inner)
    /// (a mode whose body is the inner one hands the response on as it is, without taking
    /// it apart and putting it back together).
    #[inline]
    fn response(response: http::Response<B>) -> http::Response<Self::Body> {
        response.map(Self::inner)
    }
    /// Polls the inner service's future, its response through [`response`](Self::response)
    /// (a mode whose body is the inner one returns the poll as it is: no copy of the
    /// response between the inner future's output and the layer's).
    #[doc(hidden)]
    #[inline]
    fn poll_response<F, E>(
        future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<Self::Body>, E>>
    where
        F: std::future::Future<Output = Result<http::Response<B>, E>>,
    {
        future.poll(cx).map_ok(Self::response)
    }
    /// The layer's own answer (a 429, a 503, a key error).
    fn full(data: Bytes) -> Self::Body;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Wrapped {}
    #[cfg(feature = "axum")]
    impl Sealed for super::AxumBody {}
}

/// The default [`BodyMode`]: responses carry a [`ResponseBody`] around any inner body
/// (hyper, tonic, any tower stack).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wrapped;

impl<B> BodyMode<B> for Wrapped {
    type Body = ResponseBody<B>;
    #[inline]
    fn inner(body: B) -> ResponseBody<B> {
        ResponseBody::inner(body)
    }
    fn full(data: Bytes) -> ResponseBody<B> {
        ResponseBody::full(data)
    }
}

/// The [`BodyMode`] for an axum `Router` (feature `axum`): responses carry
/// `axum::body::Body` itself, the inner service's body untouched. axum boxes any other
/// response body a layer returns, one allocation per response; this one it takes as is.
/// Get it with [`RateLimitLayer::axum_body`](super::RateLimitLayer::axum_body).
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, Default)]
pub struct AxumBody;

#[cfg(feature = "axum")]
impl BodyMode<axum::body::Body> for AxumBody {
    type Body = axum::body::Body;
    #[inline]
    fn inner(body: axum::body::Body) -> axum::body::Body {
        body
    }
    #[inline]
    fn response(response: http::Response<axum::body::Body>) -> http::Response<axum::body::Body> {
        response
    }
    #[inline]
    fn poll_response<F, E>(
        future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http::Response<axum::body::Body>, E>>
    where
        F: std::future::Future<Output = Result<http::Response<axum::body::Body>, E>>,
    {
        future.poll(cx)
    }
    fn full(data: Bytes) -> axum::body::Body {
        axum::body::Body::from(data)
    }
}
