//! Several limits on one `RateLimitLayer` in axum over real sockets (`axum::serve` on
//! 127.0.0.1:0, reqwest as the client), local time from a `ManualClock` (nothing sleeps).
//! Every `RateLimit-Policy` and `RateLimit` field is read with the RFC 9651 list parser
//! below, and every refusal is checked against the draft's rules: `Retry-After` is never
//! earlier than any `t`, no `t` is longer than its policy's `w`.
#![cfg(feature = "axum")]

#[path = "support/http.rs"]
mod http_support;

use http_support::serve;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use sluicegate::layer::{HeaderKey, KeyErrorPolicy, LayerLimit, PeerIp, RateLimitLayer};
use sluicegate::policy::{Limit, LimitName, LimitSet, Quota};
use sluicegate::{ManualClock, RateGroupSizeMs, RateLimit, RateLimiter};

// ---- RFC 9651 lists: just what the rate-limit fields use (strings, tokens, integers,
// booleans; parameters), strict about everything else.

#[derive(Debug, Clone, PartialEq)]
enum Bare {
    Int(i64),
    Str(String),
    Token(String),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct Item {
    value: Bare,
    params: Vec<(String, Bare)>,
}

impl Item {
    fn int(&self, key: &str) -> Option<i64> {
        self.params.iter().find_map(|(k, v)| match v {
            Bare::Int(n) if k == key => Some(*n),
            _ => None,
        })
    }

    fn name(&self) -> &str {
        match &self.value {
            Bare::Str(s) => s,
            other => panic!("a policy item is a string, not {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek();
        self.at += 1;
        c
    }

    fn skip(&mut self, ows: bool) {
        while matches!(self.peek(), Some(b' ')) || (ows && self.peek() == Some(b'\t')) {
            self.at += 1;
        }
    }

    fn bare(&mut self) -> Result<Bare, String> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                if self.peek() == Some(b'-') {
                    self.at += 1;
                }
                let digits = self.at;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.at += 1;
                }
                let n = self.at - digits;
                if n == 0 || n > 15 || self.peek() == Some(b'.') {
                    return Err(format!("bad integer at {start}"));
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).unwrap();
                Ok(Bare::Int(text.parse().unwrap()))
            }
            Some(b'"') => {
                self.at += 1;
                let mut out = String::new();
                loop {
                    match self.bump() {
                        Some(b'\\') => match self.bump() {
                            Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                            _ => return Err("bad escape".into()),
                        },
                        Some(b'"') => return Ok(Bare::Str(out)),
                        Some(c @ 0x20..=0x7e) => out.push(char::from(c)),
                        _ => return Err("unterminated or invalid string".into()),
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.at;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric()
                    || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.at += 1;
                }
                Ok(Bare::Token(
                    String::from_utf8(self.s[start..self.at].to_vec()).unwrap(),
                ))
            }
            Some(b'?') => {
                self.at += 1;
                match self.bump() {
                    Some(b'0') => Ok(Bare::Bool(false)),
                    Some(b'1') => Ok(Bare::Bool(true)),
                    _ => Err("bad boolean".into()),
                }
            }
            other => Err(format!("no bare item at {}: {other:?}", self.at)),
        }
    }

    fn item(&mut self) -> Result<Item, String> {
        let value = self.bare()?;
        let mut params = Vec::new();
        while self.peek() == Some(b';') {
            self.at += 1;
            self.skip(false);
            let start = self.at;
            match self.peek() {
                Some(c) if c.is_ascii_lowercase() || c == b'*' => {}
                _ => return Err(format!("bad parameter key at {start}")),
            }
            while matches!(self.peek(), Some(c) if c.is_ascii_lowercase()
                || c.is_ascii_digit() || b"_-.*".contains(&c))
            {
                self.at += 1;
            }
            let key = String::from_utf8(self.s[start..self.at].to_vec()).unwrap();
            let value = if self.peek() == Some(b'=') {
                self.at += 1;
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            if params.iter().any(|(k, _)| *k == key) {
                return Err(format!("parameter {key} twice"));
            }
            params.push((key, value));
        }
        Ok(Item { value, params })
    }
}

/// An RFC 9651 list.
fn parse_list(field: &str) -> Result<Vec<Item>, String> {
    let mut p = Parser {
        s: field.as_bytes(),
        at: 0,
    };
    p.skip(false);
    let mut items = Vec::new();
    while p.peek().is_some() {
        items.push(p.item()?);
        p.skip(true);
        match p.bump() {
            None => break,
            Some(b',') => {
                p.skip(true);
                if p.peek().is_none() {
                    return Err("trailing comma".into());
                }
            }
            Some(c) => return Err(format!("expected a comma, got {:?}", char::from(c))),
        }
    }
    Ok(items)
}

#[test]
fn the_parser_is_strict() {
    let items = parse_list(r#""burst";q=3;w=1, "minute";q=10;w=60"#).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].name(), "minute");
    assert_eq!(items[1].int("w"), Some(60));
    for bad in [
        r#""a";q=1,"#,
        r#""a";q=1 "b""#,
        r#""a;q=1"#,
        r#""a";Q=1"#,
        r#""a";q=1.5"#,
        r#""a";q=1;q=2"#,
    ] {
        assert!(parse_list(bad).is_err(), "{bad}");
    }
}

// ---- The servers.

fn limiter(clock: &ManualClock) -> Arc<RateLimiter> {
    http_support::limiter(clock, 60)
}

fn limit(name: &str, count: f64, window_s: u64) -> Limit {
    Limit::new(
        LimitName::new(name).unwrap(),
        Quota::new(count, window_s).unwrap(),
    )
}

const API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

async fn fetch(url: &str, api_key: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = api_key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

/// `(name, q, w)` of every policy in `RateLimit-Policy`.
fn policies(resp: &reqwest::Response) -> Vec<(String, i64, i64)> {
    let field = resp.headers()["ratelimit-policy"].to_str().unwrap();
    parse_list(field)
        .unwrap_or_else(|e| panic!("RateLimit-Policy {field:?}: {e}"))
        .iter()
        .map(|i| {
            (
                i.name().to_owned(),
                i.int("q").expect("q"),
                i.int("w").expect("w"),
            )
        })
        .collect()
}

/// `(name, r, t)` of every policy in `RateLimit`.
fn ratelimit(resp: &reqwest::Response) -> Vec<(String, i64, Option<i64>)> {
    let field = resp.headers()["ratelimit"].to_str().unwrap();
    parse_list(field)
        .unwrap_or_else(|e| panic!("RateLimit {field:?}: {e}"))
        .iter()
        .map(|i| (i.name().to_owned(), i.int("r").expect("r"), i.int("t")))
        .collect()
}

fn retry_after(resp: &reqwest::Response) -> i64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The draft's rules on a refusal: every policy listed in both fields, in one order;
/// no `t` above its `w`; `Retry-After` at least every `t` and at least 1.
fn check_refusal_fields(resp: &reqwest::Response) -> Vec<(String, i64, Option<i64>)> {
    let p = policies(resp);
    let r = ratelimit(resp);
    let retry = retry_after(resp);
    assert!(retry >= 1);
    assert_eq!(
        p.iter().map(|x| &x.0).collect::<Vec<_>>(),
        r.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, _, w), (_, _, t)) in p.iter().zip(&r) {
        if let Some(t) = t {
            assert!(*t <= *w, "{name}: t={t} > w={w}");
            assert!(retry >= *t, "{name}: Retry-After {retry} < t={t}");
        }
    }
    r
}

async fn problem(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

/// `burst` 3 per second and `minute` 10 per minute, both in 100 ms groups.
fn search_set() -> LimitSet {
    let group = RateGroupSizeMs::try_from(100).unwrap();
    LimitSet::new([
        limit("burst", 3.0, 1).group(group).unwrap(),
        limit("minute", 10.0, 60).group(group).unwrap(),
    ])
    .unwrap()
}

fn search_layer(rl: &Arc<RateLimiter>) -> RateLimitLayer {
    RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .limits(search_set())
        .headers_on_allowed(true)
        .problem_json()
        .build()
        .unwrap()
}

#[tokio::test]
async fn two_limits_list_both_policies_and_a_refusal_spends_neither() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let url = serve(
        Router::new()
            .route("/search", get(|| async { "found" }))
            .layer(search_layer(&rl)),
    )
    .await;
    let url = format!("{url}/search");

    // Three in the first second: each lists both policies and what is left of each.
    for n in 1..=3i64 {
        let resp = fetch(&url, Some("k1")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            policies(&resp),
            [("burst".into(), 3, 1), ("minute".into(), 10, 60)]
        );
        let r = ratelimit(&resp);
        assert_eq!((r[0].1, r[1].1), (3 - n, 10 - n), "{r:?}");
        assert_eq!(r[0].2, Some(1));
        assert_eq!(
            r[1].2,
            Some(60),
            "the minute's oldest group goes at 60.1 s: t capped"
        );
    }
    // The fourth is refused by `burst` alone, and counted by neither.
    for _ in 0..5 {
        let resp = fetch(&url, Some("k1")).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = check_refusal_fields(&resp);
        assert_eq!(r[0], ("burst".into(), 0, Some(1)));
        assert_eq!(r[1], ("minute".into(), 7, None), "minute did not refuse");
        assert_eq!(retry_after(&resp), 1);
        let body = problem(resp).await;
        assert_eq!(body["violated-policies"], serde_json::json!(["burst"]));
        assert_eq!(body["status"], 429);
    }
    // Another key has budgets of its own.
    assert_eq!(fetch(&url, Some("k2")).await.status(), StatusCode::OK);

    // Second by second, three at a time: the minute's 10 are reached after 3 + 3 + 3 + 1,
    // however many refused requests came between (they count in neither limit).
    let mut admitted = 3;
    for second in 1..=3u64 {
        // 1.2 s apart: a 1 s window with 100 ms groups holds a group for up to 1.1 s.
        clock.set(second * 1200);
        for _ in 0..3 {
            let resp = fetch(&url, Some("k1")).await;
            if admitted < 10 {
                assert_eq!(resp.status(), StatusCode::OK, "request {}", admitted + 1);
                admitted += 1;
                let r = ratelimit(&resp);
                assert_eq!(r[1].1, 10 - admitted as i64);
            } else {
                assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            }
        }
        // Refused ones between the admitted: never counted.
        let resp = fetch(&url, Some("k1")).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(admitted, 10);
    // Now the minute refuses (burst has its quota again at 4.8 s): the wait is the
    // minute's, and only it is named.
    clock.set(4_800);
    let resp = fetch(&url, Some("k1")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = check_refusal_fields(&resp);
    assert_eq!(r[0], ("burst".into(), 3, None), "burst admits now");
    assert_eq!(r[1].1, 0);
    // The first three units (t = 0 .. 0.1 s) leave at 60.1 s: 55.3 s from 4.8 s.
    assert_eq!(r[1].2, Some(56));
    assert_eq!(retry_after(&resp), 56);
    let body = problem(resp).await;
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
    assert_eq!(body["retry_after"], 56);

    // Both exhausted at once: both named, Retry-After is the longer wait.
    clock.set(60_150);
    for _ in 0..3 {
        assert_eq!(fetch(&url, Some("k1")).await.status(), StatusCode::OK);
    }
    let resp = fetch(&url, Some("k1")).await;
    let r = check_refusal_fields(&resp);
    assert_eq!(r[0].1, 0);
    assert_eq!(r[1].1, 0);
    assert_eq!(r[0].2, Some(1));
    assert!(r[1].2.unwrap() > 1);
    assert_eq!(retry_after(&resp), r[1].2.unwrap());
    let body = problem(resp).await;
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["burst", "minute"])
    );

    // No key: 401, and nothing counted anywhere.
    let resp = fetch(&url, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn per_ip_and_per_api_key_limits_together() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let layer = RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .limit(limit("key", 2.0, 60))
        .limit(LayerLimit::new(limit("ip", 3.0, 60)).key(PeerIp::new()))
        .headers_on_allowed(true)
        .problem_json()
        .build()
        .unwrap();
    let url = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;

    // Key a: two, then the key limit refuses, and the IP's count stays at 2.
    assert_eq!(fetch(&url, Some("a")).await.status(), StatusCode::OK);
    let resp = fetch(&url, Some("a")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        ratelimit(&resp).iter().map(|x| x.1).collect::<Vec<_>>(),
        [0, 1]
    );
    for _ in 0..3 {
        let resp = fetch(&url, Some("a")).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = check_refusal_fields(&resp);
        assert_eq!(
            r[1],
            ("ip".into(), 1, None),
            "the refused ones left the IP's count"
        );
        let body = problem(resp).await;
        assert_eq!(body["violated-policies"], serde_json::json!(["key"]));
    }
    // Key b from the same IP: one more fits the IP's 3, then the IP refuses it, and key
    // b's own count stays at 1.
    assert_eq!(fetch(&url, Some("b")).await.status(), StatusCode::OK);
    let resp = fetch(&url, Some("b")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = check_refusal_fields(&resp);
    assert_eq!(r[0], ("key".into(), 1, None));
    assert_eq!(r[1].0, "ip");
    assert_eq!(r[1].1, 0);
    let body = problem(resp).await;
    assert_eq!(body["violated-policies"], serde_json::json!(["ip"]));
}

#[tokio::test]
async fn per_route_sets_share_one_limiter_and_one_base_builder() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let base = RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .on_key_error(KeyErrorPolicy::RejectWith(StatusCode::UNAUTHORIZED))
        .headers_on_allowed(true);
    let search = base
        .clone()
        .limits("burst = 1/s; minute = 5/min".parse().unwrap())
        .build()
        .unwrap();
    let upload = base
        .clone()
        .limit(limit("upload", 2.0, 3600))
        .build()
        .unwrap();
    // The one-rate layer is the one-limit case, built from the same base.
    let legacy = base
        .rate(RateLimit::try_from(0.05).unwrap())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/search", get(|| async { "s" }).layer(search))
        .route("/upload", get(|| async { "u" }).layer(upload))
        .route("/legacy", get(|| async { "l" }).layer(legacy));
    let url = serve(app).await;

    let s = fetch(&format!("{url}/search"), Some("k")).await;
    assert_eq!(
        policies(&s),
        [("burst".into(), 1, 1), ("minute".into(), 5, 60)]
    );
    let u = fetch(&format!("{url}/upload"), Some("k")).await;
    assert_eq!(policies(&u), [("upload".into(), 2, 3600)]);
    let l = fetch(&format!("{url}/legacy"), Some("k")).await;
    assert_eq!(policies(&l), [("default".into(), 3, 60)]);
    // Budgets are per route: search's burst is spent, upload's is not.
    assert_eq!(
        fetch(&format!("{url}/search"), Some("k")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        fetch(&format!("{url}/upload"), Some("k")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        fetch(&format!("{url}/upload"), Some("k")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn set_layers_are_checked_when_built() {
    let rl = limiter(&ManualClock::new(0));
    let err = |b: sluicegate::layer::RateLimitLayerBuilder| b.build().unwrap_err().to_string();
    let b = || RateLimitLayer::builder(rl.clone());
    let e = err(b()
        .limit(limit("a", 2.0, 1))
        .rate(RateLimit::try_from(1.0).unwrap()));
    assert!(e.contains("not both"), "{e}");
    let e = err(b().limit(limit("a", 2.0, 1)).limit(limit("a", 5.0, 60)));
    assert!(e.contains("\"a\" twice"), "{e}");
    let e = err(b().limit(limit("a", 2.0, 1)).cost(3));
    assert!(e.contains("quota of any limit"), "{e}");
    let e = err(b().limit(limit("a", 2.0, 1)).cost(0));
    assert!(e.contains("0") || e.contains("zero"), "{e}");
    let e = err(b().limit(limit("a", 2.0, 1)).max_key_len(0));
    assert!(e.contains("max_key_len"), "{e}");
}

#[tokio::test]
async fn overlong_keys_are_431_before_any_store_sees_them() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    let one = RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .rate(RateLimit::try_from(1.0).unwrap())
        .max_key_len(40)
        .on_key_error(KeyErrorPolicy::Allow)
        .build()
        .unwrap();
    let set = RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .limit(limit("a", 5.0, 60))
        .problem_json()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/one", get(|| async { "1" }).layer(one))
        .route("/set", get(|| async { "s" }).layer(set));
    let url = serve(app).await;

    let at_cap = "k".repeat(40);
    let over = "k".repeat(41);
    let one_url = format!("{url}/one");
    assert_eq!(
        fetch(&one_url, Some(&at_cap)).await.status(),
        StatusCode::OK
    );
    assert_eq!(rl.local().absolute().key_count(), 1);
    // Over the cap: refused even though key errors are let through (else padding a key
    // would skip the limit), and never stored.
    for _ in 0..3 {
        let resp = fetch(&one_url, Some(&over)).await;
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = resp.text().await.unwrap();
        assert!(text.contains("41 bytes") && text.contains("40"), "{text}");
    }
    assert_eq!(rl.local().absolute().key_count(), 1);

    // The set layer: the default cap, 256 bytes.
    let set_url = format!("{url}/set");
    assert_eq!(
        fetch(&set_url, Some(&"x".repeat(256))).await.status(),
        StatusCode::OK
    );
    let resp = fetch(&set_url, Some(&"x".repeat(257))).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body = problem(resp).await;
    assert_eq!(body["status"], 431);
    // A 64 KiB key, as in the attack: still a clean 431.
    let resp = fetch(&set_url, Some(&"y".repeat(60_000))).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn each_limit_resolves_its_own_quota_per_key() {
    let clock = ManualClock::new(0);
    let rl = limiter(&clock);
    // Plans by API key on the minute limit (`pro_` 5, others 2), one fixed burst of 3.
    let layer = RateLimitLayer::builder(rl.clone())
        .key(HeaderKey::new(API_KEY))
        .limit(limit("burst", 3.0, 1))
        .limit(LayerLimit::new(limit("plan", 2.0, 60)).count_fn(|key, _| {
            if key.as_str().starts_with("pro_") {
                5.0
            } else if key.as_str() == "broken" {
                0.5
            } else {
                2.0
            }
        }))
        .headers_on_allowed(true)
        .build()
        .unwrap();
    let url = serve(
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;

    let resp = fetch(&url, Some("free_1")).await;
    assert_eq!(
        policies(&resp),
        [("burst".into(), 3, 1), ("plan".into(), 2, 60)]
    );
    assert_eq!(fetch(&url, Some("free_1")).await.status(), StatusCode::OK);
    let resp = fetch(&url, Some("free_1")).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = check_refusal_fields(&resp);
    assert_eq!(
        r[0],
        ("burst".into(), 1, None),
        "the plan refused, burst spent nothing"
    );
    assert_eq!(r[1].1, 0);

    let mut admitted = 0;
    for second in 0..3u64 {
        clock.set(second * 1200);
        for _ in 0..3 {
            let resp = fetch(&url, Some("pro_1")).await;
            if resp.status() == StatusCode::OK {
                admitted += 1;
                assert_eq!(policies(&resp)[1], ("plan".into(), 5, 60));
                assert_eq!(ratelimit(&resp)[1].1, 5 - admitted);
            }
        }
    }
    assert_eq!(admitted, 5, "the pro plan's 5 a minute");

    // A resolver's count below one request is a bug: a logged 500, nothing counted.
    let resp = fetch(&url, Some("broken")).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
