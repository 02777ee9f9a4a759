//! The demo's Redis kill check (issue 13), on the real demo process: `demo --serve --redis
//! URL` (built by `cargo test` as `target/<profile>/examples/demo`, with this run's
//! features) against a `redis-server` of our own. Killing that Redis must not slow `/api`
//! down (after the first second, at most 10 ms more at p99 than with Redis up: the circuit
//! breaker fails calls at once and the layer fails open), and 429s must be back within 2 s
//! of Redis's restart.
#![cfg(all(feature = "redis-tokio", feature = "axum"))]

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::RedisServer;

/// The demo process, killed when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let demo = profile_dir.join("examples").join("demo");
    assert!(
        demo.is_file(),
        "{} not found: `cargo test --features redis-tokio,axum` builds the examples",
        demo.display()
    );
    demo
}

async fn get(client: &reqwest::Client, url: &str, key: &str) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let resp = client
        .get(url)
        .header("x-api-key", key)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    Some((resp.status().as_u16(), started.elapsed()))
}

/// Requests `/api` one after another for 300 ms (or `span`), keys `prefix_0..50`,
/// every answer a 200 (Redis up: free keys with room; down: fail open); their p99.
async fn round_p99(
    client: &reqwest::Client,
    api: &str,
    prefix: &str,
    span: Option<Duration>,
) -> Duration {
    let span = span.unwrap_or(Duration::from_millis(300));
    let started = Instant::now();
    let mut took = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < span {
        i += 1;
        let (status, t) = get(client, api, &format!("{prefix}_{}", i % 50))
            .await
            .expect("the demo answers");
        assert!(status == 200 || status == 429, "status {status}");
        took.push(t);
    }
    assert!(took.len() >= 10, "only {} requests in {span:?}", took.len());
    took.sort();
    took[took.len() * 99 / 100]
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_demos_redis_keeps_api_fast_and_429s_return_after_the_restart() {
    let mut redis = RedisServer::start();
    let port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let _demo = Demo(
        Command::new(demo_binary())
            .args(["--serve", "--redis", &redis.url()])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the demo starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let api = format!("{base}/api");
    let client = reqwest::Client::new();
    let up = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < up, "the demo did not serve within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis up: a free key gets 5 per window, then 429.
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..7 {
            s.push(get(&client, &api, "free_before").await.unwrap().0);
        }
        s
    };
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);

    // The same requests with Redis up, for comparison (this machine, this build): eight
    // rounds of 300 ms, as below.
    let mut up_rounds = Vec::new();
    for round in 0..8 {
        up_rounds.push(round_p99(&client, &api, &format!("free_up_{round}"), None).await);
    }

    // Redis killed: /api keeps answering (fail open), fast after the first second.
    redis.kill();
    let killed = Instant::now();
    round_p99(
        &client,
        &api,
        "free_first_second",
        Some(Duration::from_secs(1)),
    )
    .await;
    let mut down_rounds = Vec::new();
    for round in 0..8 {
        down_rounds.push(round_p99(&client, &api, &format!("free_down_{round}"), None).await);
    }
    let (up, down) = (median(&mut up_rounds), median(&mut down_rounds));
    eprintln!(
        "p99 per 300 ms round: Redis up {up_rounds:?} (median {up:?}); Redis down, \
         after the first second ({} ms) {down_rounds:?} (median {down:?})",
        killed.elapsed().as_millis()
    );
    // The bound is on the latency Redis being down adds: at most 10 ms at p99 over
    // the same requests with Redis up, compared round for round on the median (this shared
    // 2-core VM's own p99 varies from 1 to 25 ms between rounds; the deadline is 1000 ms).
    assert!(
        down <= up + Duration::from_millis(10),
        "p99 {down:?} with Redis down, {up:?} with it up"
    );

    // Redis back (empty): a key is limited again within 2 s of the restart.
    redis.restart();
    let restarted = Instant::now();
    let mut limited = None;
    while restarted.elapsed() < Duration::from_secs(5) {
        if let Some((429, _)) = get(&client, &api, "free_after").await {
            limited = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let limited = limited.expect("no 429 within 5 s of the restart");
    eprintln!("first 429 {} ms after the restart", limited.as_millis());
    assert!(
        limited <= Duration::from_secs(2),
        "429s came back {limited:?} after the restart"
    );
}
