//! The layer's own answers: 429, 503 and key-extraction failures, as plain text, RFC 9457
//! problem details, or whatever a hook builds.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::extract::{Key, KeyError};
use crate::Error;

/// Why the layer answered instead of the inner service; given to a custom response hook.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// The absolute strategy refused the request: `429 Too Many Requests`.
    RateLimited {
        /// The key that is over its limit (with several limits on different keys: the key
        /// of the first limit that refused).
        key: &'a Key,
        /// `Retry-After`, in whole seconds (at least 1).
        retry_after_seconds: u64,
        /// The policies that refused the request.
        violated: ViolatedPolicies<'a>,
    },
    /// The suppressed strategy shed the request: `503 Service Unavailable`.
    Suppressed {
        /// The key being suppressed.
        key: &'a Key,
        /// The share of the key's requests being shed, in `[0, 1]`.
        suppression_factor: f64,
        /// `Retry-After`, in whole seconds: 1 below the hard limit, the window at factor 1.
        retry_after_seconds: u64,
        /// The policies that shed the request.
        violated: ViolatedPolicies<'a>,
    },
    /// No key could be read from the request (the configured status, 500 by default for a
    /// set-up mistake, 401 for a missing credential header, 400 for a malformed one).
    KeyUnavailable {
        /// What is missing and how to fix it.
        error: &'a KeyError,
        /// The status the layer answers with.
        status: StatusCode,
    },
    /// The provider failed and the layer fails closed: `503 Service Unavailable`. The
    /// built-in bodies never show the error (it names servers, addresses and Redis's own
    /// words, which are for the logs: the layer logs it with `tracing::warn!`); a custom
    /// hook gets it here.
    ProviderUnavailable {
        /// The provider's error.
        error: &'a Error,
    },
    /// A resolved rate or cost does not fit the limiter (capacity below one request, or a
    /// cost above the capacity): `500 Internal Server Error`; fix the resolver.
    Misconfigured {
        /// Which value is out of range.
        error: &'a Error,
    },
}

impl Rejection<'_> {
    /// The status the layer answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Suppressed { .. } | Rejection::ProviderUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::KeyUnavailable { status, .. } => *status,
            Rejection::Misconfigured { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A sentence for a human: what happened and what to do.
    pub fn detail(&self) -> String {
        match self {
            Rejection::RateLimited {
                retry_after_seconds,
                ..
            } => format!("rate limit exceeded; retry in {retry_after_seconds} s"),
            Rejection::Suppressed {
                suppression_factor, ..
            } => format!(
                "request shed under load (suppression factor {suppression_factor:.3}); retry shortly"
            ),
            Rejection::KeyUnavailable { error, .. } => error.to_string(),
            // Never the error itself: it is in the logs, not for clients.
            Rejection::ProviderUnavailable { .. } => {
                "rate limiter unavailable; retry shortly".to_owned()
            }
            Rejection::Misconfigured { error } => {
                format!("rate limiter misconfigured: {error}")
            }
        }
    }
}

/// The names of the policies that refused or shed a request, in the layer's order
/// (`violated-policies` in the problem+json body). Borrowed from the layer: no allocation.
#[derive(Debug, Clone, Copy)]
pub struct ViolatedPolicies<'a> {
    names: &'a [Box<str>],
    /// Bit `i`: the policy `names[i]` refused.
    mask: u16,
}

impl<'a> ViolatedPolicies<'a> {
    pub(crate) fn new(names: &'a [Box<str>], mask: u16) -> Self {
        ViolatedPolicies { names, mask }
    }

    /// The names, in the layer's order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mask = self.mask;
        self.names
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, n)| &**n)
    }

    /// How many policies refused.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no policy refused (never, on a 429 or a shed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A hook that builds the response for a rejection. The layer then adds `Retry-After`,
/// the IETF fields and the suppression factor where the hook did not set them.
pub type RejectionFn = dyn Fn(&Rejection<'_>) -> Response<Bytes> + Send + Sync;

/// How the layer words its own answers.
#[derive(Clone, Default)]
pub enum RejectionBody {
    /// `text/plain`: the reason and what to do (the default).
    #[default]
    PlainText,
    /// RFC 9457 `application/problem+json` with `type`, `title`, `status`, `detail` and,
    /// on 429 and 503, a `retry_after` member in seconds and `violated-policies`, the
    /// names of the policies that refused (as the IETF draft's problem types do).
    ProblemJson,
    /// A hook of your own.
    Custom(Arc<RejectionFn>),
}

impl std::fmt::Debug for RejectionBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectionBody::PlainText => f.write_str("PlainText"),
            RejectionBody::ProblemJson => f.write_str("ProblemJson"),
            RejectionBody::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const PROBLEM: HeaderValue = HeaderValue::from_static("application/problem+json");

impl RejectionBody {
    /// The response for `rejection`, before the layer adds its fields.
    pub(crate) fn build(&self, rejection: &Rejection<'_>) -> Response<Bytes> {
        let status = rejection.status();
        let (body, content_type) = match self {
            RejectionBody::Custom(hook) => return hook(rejection),
            RejectionBody::PlainText => (plain_text(rejection), TEXT),
            RejectionBody::ProblemJson => (Bytes::from(problem_json(rejection)), PROBLEM),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        response
    }
}

/// The two answers given under attack need no formatting.
fn plain_text(rejection: &Rejection<'_>) -> Bytes {
    match rejection {
        Rejection::RateLimited { .. } => Bytes::from_static(
            b"Too Many Requests: rate limit exceeded; retry after the Retry-After header's seconds\n",
        ),
        Rejection::Suppressed { .. } => Bytes::from_static(
            b"Service Unavailable: request shed under load; retry after the Retry-After header's seconds\n",
        ),
        Rejection::ProviderUnavailable { .. } => {
            Bytes::from_static(b"Service Unavailable: rate limiter unavailable; retry shortly\n")
        }
        other => Bytes::from(format!("{}\n", other.detail())),
    }
}

fn problem_json(rejection: &Rejection<'_>) -> String {
    let status = rejection.status();
    let mut out = String::with_capacity(160);
    out.push_str("{\"type\":\"about:blank\",\"title\":");
    json_string(&mut out, status.canonical_reason().unwrap_or("Error"));
    out.push_str(",\"status\":");
    out.push_str(&status.as_u16().to_string());
    out.push_str(",\"detail\":");
    json_string(&mut out, &rejection.detail());
    match rejection {
        Rejection::RateLimited {
            retry_after_seconds,
            violated,
            ..
        } => {
            out.push_str(&format!(",\"retry_after\":{retry_after_seconds}"));
            violated_json(&mut out, violated);
        }
        Rejection::Suppressed {
            suppression_factor,
            retry_after_seconds,
            violated,
            ..
        } => {
            out.push_str(&format!(
                ",\"retry_after\":{retry_after_seconds},\"suppression_factor\":{suppression_factor:.3}"
            ));
            violated_json(&mut out, violated);
        }
        _ => {}
    }
    out.push('}');
    out
}

/// `,"violated-policies":["a","b"]`.
fn violated_json(out: &mut String, violated: &ViolatedPolicies<'_>) {
    out.push_str(",\"violated-policies\":[");
    for (i, name) in violated.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, name);
    }
    out.push(']');
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_json_is_rfc_9457_shaped_and_escaped() {
        let key = Key::new("k");
        let names: Vec<Box<str>> = vec!["burst".into(), "minute".into(), "day".into()];
        let r = Rejection::RateLimited {
            key: &key,
            retry_after_seconds: 3,
            violated: ViolatedPolicies::new(&names, 0b101),
        };
        let resp = RejectionBody::ProblemJson.build(&r);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(
            resp.body(),
            &Bytes::from_static(
                br#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"rate limit exceeded; retry in 3 s","retry_after":3,"violated-policies":["burst","day"]}"#
            )
        );
        let err = KeyError::custom(StatusCode::BAD_REQUEST, "bad \"x\"\n\u{1}");
        let r = Rejection::KeyUnavailable {
            error: &err,
            status: StatusCode::BAD_REQUEST,
        };
        let body = problem_json(&r);
        assert!(body.contains(r#""detail":"bad \"x\"\n\u0001""#), "{body}");
    }

    #[cfg(feature = "redis-tokio")]
    #[test]
    fn a_provider_error_stays_out_of_the_body() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect 10.1.2.3:6379 WRONGPASS secret-user",
        );
        let err = Error::Redis(::redis::RedisError::from(io));
        let r = Rejection::ProviderUnavailable { error: &err };
        for body in [RejectionBody::PlainText, RejectionBody::ProblemJson] {
            let resp = body.build(&r);
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            let text = std::str::from_utf8(resp.body()).unwrap();
            assert!(text.contains("rate limiter unavailable"), "{text}");
            for leak in ["10.1.2.3", "6379", "WRONGPASS", "secret-user", "refused"] {
                assert!(!text.contains(leak), "{leak} in {text}");
            }
        }
    }

    #[test]
    fn plain_text_names_the_fix_for_key_errors() {
        let err = KeyError::MissingPeerAddr;
        let r = Rejection::KeyUnavailable {
            error: &err,
            status: err.status(),
        };
        let resp = RejectionBody::PlainText.build(&r);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = std::str::from_utf8(resp.body()).unwrap();
        assert!(
            body.contains("into_make_service_with_connect_info"),
            "{body}"
        );
    }
}
