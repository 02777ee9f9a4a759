//! The layer's own answers as gRPC statuses, for services behind a tonic (or any gRPC)
//! server: a refusal is `RESOURCE_EXHAUSTED`, a shed or an unavailable provider
//! `UNAVAILABLE`, with the wait as `grpc-retry-pushback-ms` (gRFC A6) and as a
//! `google.rpc.RetryInfo` in `grpc-status-details-bin` (the rich error model).
//!
//! The answer is a gRPC "trailers-only" response: HTTP status 200, `content-type:
//! application/grpc`, `grpc-status` and `grpc-message` in the headers and no body, which
//! every gRPC client reads as the call's status. The layer's other fields (`Retry-After`,
//! `RateLimit`, `RateLimit-Policy`) stay as response metadata.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// How the layer words its own answers: HTTP (the default) or gRPC statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// `429`, `503` and the key errors' statuses, with the chosen body.
    #[default]
    Http,
    /// gRPC statuses, as a trailers-only response (HTTP 200, `content-type:
    /// application/grpc`, `grpc-status` and `grpc-message` in the headers, the wait as
    /// `grpc-retry-pushback-ms` and a `google.rpc.RetryInfo` in `grpc-status-details-bin`):
    /// `RESOURCE_EXHAUSTED` (8) for a limit, `UNAVAILABLE` (14) for a shed or a provider failing closed, and the key
    /// errors mapped by their HTTP status (400 → `INVALID_ARGUMENT`, 401 →
    /// `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`, other 5xx → `INTERNAL`).
    Grpc,
}

/// The gRPC status code for an HTTP status the layer answers with.
pub(crate) fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        429 => 8,        // RESOURCE_EXHAUSTED
        503 => 14,       // UNAVAILABLE
        400 | 431 => 3,  // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        500..=599 => 13, // INTERNAL
        _ => 2,          // UNKNOWN
    }
}

/// `grpc-retry-pushback-ms`: the wait a client should honour before retrying.
pub const GRPC_RETRY_PUSHBACK_MS: http::HeaderName =
    http::HeaderName::from_static("grpc-retry-pushback-ms");
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_DETAILS: http::HeaderName = http::HeaderName::from_static("grpc-status-details-bin");

/// The layer's HTTP answer turned into a trailers-only gRPC status: the status mapped by
/// [`grpc_code`], the body's text as the message, `retry_after_ms` (if any) as
/// `grpc-retry-pushback-ms` and a `RetryInfo` detail. The answer's other headers stay.
pub(crate) fn into_grpc(response: Response<Bytes>, retry_after_ms: Option<u64>) -> Response<Bytes> {
    let (mut parts, body) = response.into_parts();
    let code = grpc_code(parts.status);
    let text = String::from_utf8_lossy(&body);
    let message = text.trim();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    if let Some(ms) = retry_after_ms {
        h.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from(ms));
        let details = status_with_retry_info(code, message, ms);
        if let Ok(v) = HeaderValue::from_str(&base64(&details)) {
            h.insert(GRPC_DETAILS, v);
        }
    }
    h.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Bytes::new())
}

/// `grpc-message` escaping: `%`-encoded outside printable ASCII, and `%` itself.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A protobuf `google.rpc.Status { code, message, details: [Any(RetryInfo)] }`.
fn status_with_retry_info(code: u8, message: &str, retry_ms: u64) -> Vec<u8> {
    // google.protobuf.Duration { seconds = 1, nanos = 2 }
    let mut duration = Vec::new();
    let (seconds, nanos) = (retry_ms / 1000, (retry_ms % 1000) * 1_000_000);
    if seconds > 0 {
        duration.push(0x08);
        varint(&mut duration, seconds);
    }
    if nanos > 0 {
        duration.push(0x10);
        varint(&mut duration, nanos);
    }
    // google.rpc.RetryInfo { retry_delay = 1 }
    let mut retry_info = Vec::new();
    field(&mut retry_info, 1, &duration);
    // google.protobuf.Any { type_url = 1, value = 2 }
    let mut any = Vec::new();
    field(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
    field(&mut any, 2, &retry_info);
    // google.rpc.Status { code = 1, message = 2, details = 3 }
    let mut status = vec![0x08];
    varint(&mut status, u64::from(code));
    field(&mut status, 2, message.as_bytes());
    field(&mut status, 3, &any);
    status
}

/// A length-delimited field.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push((number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Standard base64 without padding, as gRPC sends `-bin` metadata.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_becomes_resource_exhausted_with_its_wait() {
        let mut resp = Response::new(Bytes::from_static(b"Too Many Requests: 100%\n"));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let g = into_grpc(resp, Some(2_500));
        assert_eq!(g.status(), StatusCode::OK);
        assert!(g.body().is_empty());
        let h = g.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "Too Many Requests: 100%25");
        assert_eq!(h["grpc-retry-pushback-ms"], "2500");
        assert_eq!(h["retry-after"], "3", "the other fields stay");
        assert!(h.contains_key("grpc-status-details-bin"));
    }

    #[test]
    fn codes_follow_the_http_status() {
        for (status, code) in [
            (429, 8),
            (503, 14),
            (400, 3),
            (401, 16),
            (500, 13),
            (418, 2),
        ] {
            assert_eq!(grpc_code(StatusCode::from_u16(status).unwrap()), code);
        }
    }

    #[test]
    fn protobuf_and_base64_encode_as_the_wire_format_says() {
        // Status{code: 8, message: "x", details: [Any{RetryInfo{1.5 s}}]}
        let bytes = status_with_retry_info(8, "x", 1_500);
        let url = b"type.googleapis.com/google.rpc.RetryInfo";
        // RetryInfo { Duration { seconds: 1, nanos: 500_000_000 } }; the nanos' varint is
        // 80 ca b5 ee 01.
        assert_eq!(&bytes[..5], &[0x08, 0x08, 0x12, 0x01, b'x']);
        assert_eq!(bytes[5], 0x1a);
        assert!(bytes.windows(url.len()).any(|w| w == url));
        assert!(
            bytes.ends_with(&[0x0a, 0x08, 0x08, 0x01, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01]),
            "{bytes:x?}"
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg");
        assert_eq!(base64(b"fo"), "Zm8");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg");
        assert_eq!(base64(&[0xff, 0xfe]), "//4");
    }
}
