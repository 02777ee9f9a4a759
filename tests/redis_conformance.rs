//! The conformance table, run against the local provider and against Redis (a server of
//! our own, or `SLUICEGATE_REDIS_URL`): the same calls must get the same decisions.
#![cfg(feature = "redis-tokio")]

mod support;

use support::conformance::{Provider, run_table};

#[tokio::test]
async fn local_provider_passes_the_table() {
    run_table(&Provider::Local).await;
}

#[tokio::test]
async fn redis_provider_passes_the_table() {
    let redis = support::TestRedis::get();
    let conn = redis.manager().await;
    run_table(&Provider::Redis(conn.into())).await;
}

/// The Redis provider's admitted decisions carry the key's usage, remaining quota and reset
/// from the same script (the hot path and the full one alike); a rejection carries none.
#[tokio::test]
async fn admitted_redis_decisions_carry_the_usage_from_the_same_script() {
    use sluicegate::redis::{KeyUsage, RedisKey};
    use sluicegate::{ManualClock, RateLimit, RateLimitDecision};
    use support::conformance::{ScriptedDraw, options_10s};

    const T0: u64 = 1_000_000_000_000;
    let redis = support::TestRedis::get();
    let clock = ManualClock::new(T0);
    let draw = ScriptedDraw::default();
    let conn = Some(redis.manager().await.into());
    let rl = support::conformance::clocked_limiter(options_10s(1000), conn, &clock, &draw, "usage");
    let rate = RateLimit::try_from(1.0).unwrap(); // capacity 10
    let usage = |used, remaining, reset_ms| (used, remaining, reset_ms);
    let of = |u: Option<KeyUsage>| u.map(|u| (u.used, u.remaining, u.reset_ms));
    for (strategy, key) in [("absolute", "ua"), ("suppressed", "us")] {
        let key = RedisKey::try_from(key).unwrap();
        let inc = |count: u64| {
            let (rl, key) = (&rl, &key);
            async move {
                match strategy {
                    "absolute" => {
                        rl.redis()
                            .absolute()
                            .inc_with_usage(key, &rate, count)
                            .await
                    }
                    _ => {
                        rl.redis()
                            .suppressed()
                            .inc_with_usage(key, &rate, count)
                            .await
                    }
                }
                .unwrap()
            }
        };
        clock.set(T0);
        // A new key (the full script): its only bucket leaves the window at +11 s, capped
        // at the window.
        let (d, u) = inc(3).await;
        assert!(d.is_allowed(), "{strategy}");
        assert_eq!(of(u), Some(usage(3, 7, 10_000)), "{strategy}");
        clock.set(T0 + 2500);
        // A new bucket (the full script): the first one still leaves at +11 s.
        let (_, u) = inc(2).await;
        assert_eq!(of(u), Some(usage(5, 5, 8_500)), "{strategy}");
        clock.set(T0 + 2600);
        // The open bucket (the hot path).
        let (_, u) = inc(1).await;
        assert_eq!(of(u), Some(usage(6, 4, 8_400)), "{strategy}");
        let (_, u) = inc(4).await;
        assert_eq!(of(u), Some(usage(10, 0, 8_400)), "{strategy}");
        draw.set(0.0);
        let (d, u) = inc(1).await;
        assert!(!d.is_allowed(), "{strategy}");
        match d {
            RateLimitDecision::Rejected { .. } => assert_eq!(u, None),
            // A shed call is observed, not accepted: the usage is still 10.
            _ => assert_eq!(of(u), Some(usage(10, 0, 8_400))),
        }
        // The seeds' `inc` answers as before.
        let plain = match strategy {
            "absolute" => rl.redis().absolute().inc(&key, &rate, 1).await,
            _ => rl.redis().suppressed().inc(&key, &rate, 1).await,
        };
        assert!(!plain.unwrap().is_allowed());
    }
}

#[tokio::test]
async fn local_provider_passes_the_set_table() {
    support::conformance::run_set_table(&support::conformance::SetProvider::Local).await;
}

#[tokio::test]
async fn redis_provider_passes_the_set_table() {
    let redis = support::TestRedis::get();
    let conn = redis.manager().await;
    support::conformance::run_set_table(&support::conformance::SetProvider::Redis(conn.into()))
        .await;
}
