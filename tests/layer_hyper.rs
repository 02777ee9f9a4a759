//! The plain-hyper path (no axum): the code of `examples/hyper.rs`, served on
//! 127.0.0.1:0 and called with hyper-util's client.
#![cfg(feature = "tower")]

#[path = "../examples/hyper.rs"]
mod example;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn the_hyper_example_limits_and_answers_with_every_field() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example::serve(listener, example::limiter()));

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = || {
        let req = Request::get(format!("http://{addr}/"))
            .body(Empty::new())
            .unwrap();
        client.request(req)
    };
    for left in (0..5).rev() {
        let resp = get().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["ratelimit-policy"], "\"default\";q=5;w=60");
        assert_eq!(
            resp.headers()["ratelimit"],
            format!("\"default\";r={left};t=60").as_str()
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello\n");
    }
    let resp = get().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Real clock: the first request was moments ago, so the wait is about a full window.
    assert!((55..=61).contains(&retry), "{retry}");
    assert_eq!(
        resp.headers()["ratelimit"],
        format!("\"default\";r=0;t={retry}").as_str()
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"Too Many Requests"));
}
