//! Limit sets on Redis: the same decisions as the local provider for the same calls, one
//! slot per key (so Redis Cluster too), and exact across processes.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::policy::{Limit, LimitSet, Outcome};
use sluicegate::redis::RedisKey;
use sluicegate::{
    Clock, HardLimitFactor, ManualClock, RandomSource, RateLimiter, RateLimiterBuilder,
};

fn local() -> LocalRateLimiterOptions {
    LocalRateLimiterOptions {
        window_size_seconds: 1.try_into().unwrap(),
        rate_group_size_ms: 100.try_into().unwrap(),
        hard_limit_factor: Default::default(),
        suppression_factor_cache_ms: 0.try_into().unwrap(),
    }
}

/// A draw that is always the same, so both providers decide a shedding call alike.
#[derive(Debug)]
struct Half;

impl RandomSource for Half {
    fn next_f64(&self) -> f64 {
        0.5
    }
}

fn set() -> LimitSet {
    LimitSet::new([
        "burst = 3/s".parse::<Limit>().unwrap(),
        "minute = 20/m".parse::<Limit>().unwrap(),
        "shed = 5/10s"
            .parse::<Limit>()
            .unwrap()
            .suppressed(HardLimitFactor::try_from(1.5).unwrap()),
    ])
    .unwrap()
}

async fn on_clock(redis: &support::TestRedis, clock: &ManualClock) -> RateLimiter {
    let prefix = support::unique_prefix("policy");
    RateLimiterBuilder::new(local())
        .redis_connection(
            redis.manager().await,
            support::redis_settings(&local(), &prefix, SyncIntervalMs::default()),
        )
        .redis_time_from_clock_for_tests_only(clock.clone())
        .clock(clock.clone())
        .random(Half)
        .build()
        .unwrap()
}

/// The local and the Redis provider, on one manual clock, take the same random sequence of
/// calls (three limits, two absolute and one suppressed, several keys, costs 1-3) and give
/// the same answer to every one: outcome, wait, and each limit's status.
#[tokio::test]
async fn redis_decides_every_call_as_the_local_provider() {
    let redis = support::TestRedis::get();
    let clock = ManualClock::new(1_000_000);
    let rl = on_clock(&redis, &clock).await;
    let local = rl.local().policy(set());
    let remote = rl.redis().policy(set()).unwrap();
    let mut rng = 99u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut seen = [0usize; 3];
    for call in 0..1_500 {
        // Mostly a few calls a second per key; now and then a pause that empties the short
        // windows, so every limit admits, refuses and sheds in turn.
        // A third of the calls come at the same instant as the one before: every limit's
        // open bucket is then the bucket of now, the script's hot path.
        clock.advance(match (call % 40, next(3)) {
            (39, _) => 12_000,
            (_, 0) => 0,
            _ => next(400),
        });
        let key = ["a", "b"][next(2) as usize];
        let cost = 1 + next(3);
        let want = local.inc(key, cost).unwrap();
        let got = remote
            .inc(&RedisKey::try_from(key).unwrap(), cost)
            .await
            .unwrap();
        assert_eq!(got, want, "call {call}: key {key}, cost {cost}");
        seen[want.outcome() as usize] += 1;
    }
    assert!(
        seen.iter().all(|n| *n > 50),
        "every outcome reached: {seen:?}"
    );
    // A check answers as an increment would and records nothing.
    let k = RedisKey::try_from("a").unwrap();
    let before = remote.check(&k, 1).await.unwrap();
    assert_eq!(remote.check(&k, 1).await.unwrap(), before);
    assert_eq!(before, local.check("a", 1).unwrap());
}

/// Four processes' worth of limiters (each its own connection) hammer one key's set at
/// once: no limit admits more than its quota, and every limit counted exactly the admitted
/// requests (the refused ones spent nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_never_push_a_limit_over_its_quota() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("policy4");
    let set: LimitSet = "burst = 30/m; day = 200/d".parse().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let rl = Arc::new(
            RateLimiterBuilder::new(local())
                .redis_connection(
                    redis.manager().await,
                    support::redis_settings(&local(), &prefix, SyncIntervalMs::default()),
                )
                .build()
                .unwrap(),
        );
        let policy = rl.redis().policy(set.clone()).unwrap();
        tasks.push(tokio::spawn(async move {
            let key = RedisKey::try_from("shared").unwrap();
            let mut admitted = 0u64;
            for _ in 0..100 {
                if policy.inc(&key, 1).await.unwrap().is_allowed() {
                    admitted += 1;
                }
            }
            drop(rl);
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 30, "the burst limit admits exactly its quota");
    let rl = RateLimiterBuilder::new(local())
        .redis_connection(
            redis.manager().await,
            support::redis_settings(&local(), &prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap();
    let d = rl
        .redis()
        .policy(set)
        .unwrap()
        .check(&RedisKey::try_from("shared").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(d.outcome(), Outcome::Rejected);
    assert_eq!(d.limits()[0].remaining, 0);
    assert_eq!(
        d.limits()[1].remaining,
        170,
        "370 refused requests spent none of the day"
    );
}

/// Four limiter instances (each its own connection) share a per-IP limit while each user
/// key has its own: the IP limit admits exactly its quota, no user key exceeds its own, and
/// every limit counted exactly the admitted requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_share_an_ip_limit_exactly() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("policy4each");
    let set: LimitSet = "ip = 30/m; user = 10/m".parse().unwrap();
    let settings = || support::redis_settings(&local(), &prefix, SyncIntervalMs::default());
    let mut tasks = Vec::new();
    for instance in 0..4u64 {
        let rl = RateLimiterBuilder::new(local())
            .redis_connection(redis.manager().await, settings())
            .build()
            .unwrap();
        let policy = rl.redis().policy(set.clone()).unwrap();
        tasks.push(tokio::spawn(async move {
            let ip = RedisKey::try_from("192.0.2.7").unwrap();
            let mut admitted = [0u64; 5];
            for i in 0..60u64 {
                let u = ((instance + i) % 5) as usize;
                let user = RedisKey::try_from(format!("user{u}")).unwrap();
                if policy
                    .inc_each(&[&ip, &user], 1)
                    .await
                    .unwrap()
                    .is_allowed()
                {
                    admitted[u] += 1;
                }
            }
            drop(rl);
            admitted
        }));
    }
    let mut admitted = [0u64; 5];
    for task in tasks {
        for (total, n) in admitted.iter_mut().zip(task.await.unwrap()) {
            *total += n;
        }
    }
    assert_eq!(
        admitted.iter().sum::<u64>(),
        30,
        "the IP limit admits exactly its quota"
    );
    let rl = RateLimiterBuilder::new(local())
        .redis_connection(redis.manager().await, settings())
        .build()
        .unwrap();
    let policy = rl.redis().policy(set).unwrap();
    let ip = RedisKey::try_from("192.0.2.7").unwrap();
    for (u, n) in admitted.iter().enumerate() {
        assert!(*n <= 10, "user{u} admitted {n}");
        let user = RedisKey::try_from(format!("user{u}")).unwrap();
        let d = policy.check_each(&[&ip, &user], 1).await.unwrap();
        assert_eq!(d.limits()[0].remaining, 0);
        assert_eq!(
            d.limits()[1].remaining,
            10 - n,
            "user{u}: counted once per admitted request, never for a refused one"
        );
    }
}

/// Every key of a set shares the user key's hash tag, and every one carries a TTL.
#[tokio::test]
async fn a_sets_keys_share_one_hash_tag_and_expire() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("policyttl");
    let rl = RateLimiterBuilder::new(local())
        .redis_connection(
            redis.manager().await,
            support::redis_settings(&local(), &prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap();
    let p = rl.redis().policy(set()).unwrap();
    let key = RedisKey::try_from("user").unwrap();
    for _ in 0..3 {
        assert!(p.inc(&key, 1).await.unwrap().is_allowed());
    }
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", prefix.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    for limit in ["burst", "minute", "shed"] {
        let hash = format!("{}:{{user}}:p:{limit}:h", prefix.as_str());
        assert!(keys.contains(&hash), "{hash} in {keys:?}");
    }
    for k in &keys {
        assert!(k.contains("{user}"), "{k}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

/// One key per limit on one server: still one script, atomic over every key.
#[tokio::test]
async fn one_key_per_limit_on_one_server() {
    let redis = support::TestRedis::get();
    let clock = ManualClock::new(0);
    let rl = on_clock(&redis, &clock).await;
    let p = rl
        .redis()
        .policy("ip = 5/m; apikey = 2/m".parse().unwrap())
        .unwrap();
    let ip = RedisKey::try_from("198.51.100.4").unwrap();
    let mut admitted = 0;
    for k in 0..4 {
        let api = RedisKey::try_from(format!("api{k}")).unwrap();
        for _ in 0..4 {
            admitted += usize::from(p.inc_each(&[&ip, &api], 1).await.unwrap().is_allowed());
        }
    }
    assert_eq!(admitted, 5, "2 + 2 + 1: the IP's quota, then nothing");
    let probe = RedisKey::try_from("probe").unwrap();
    let d = p.check_each(&[&ip, &probe], 1).await.unwrap();
    assert_eq!(d.refused().collect::<Vec<_>>(), vec![0]);
    assert_eq!(d.limits()[1].remaining, 2);
    let api3 = RedisKey::try_from("api3").unwrap();
    let other = RedisKey::try_from("198.51.100.5").unwrap();
    assert_eq!(
        p.check_each(&[&other, &api3], 1).await.unwrap().limits()[1].remaining,
        2,
        "api3 was refused by the IP limit every time and was charged nothing"
    );
    assert!(p.inc_each(&[&ip], 1).await.is_err(), "one key per limit");
}

/// Per-call quotas on Redis: the same random calls with a count resolved per call (a plan
/// per key, and now and then a plan change) get the same answers as on the local provider,
/// on one key and on one key per limit; a bad count is refused before any round trip.
#[tokio::test]
async fn per_call_quotas_decide_as_the_local_provider() {
    let redis = support::TestRedis::get();
    let clock = ManualClock::new(1_000_000);
    let rl = on_clock(&redis, &clock).await;
    let local = rl.local().policy(set());
    let remote = rl.redis().policy(set()).unwrap();
    let mut rng = 7u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut seen = [0usize; 3];
    for call in 0..1_200 {
        clock.advance(match (call % 40, next(3)) {
            (39, _) => 12_000,
            (_, 0) => 0,
            _ => next(400),
        });
        let user = ["pro_a", "b"][next(2) as usize];
        let ip = ["ip1", "ip2"][next(2) as usize];
        // Plans: pro_ keys get 3x the set's counts; one call in ten under a changed plan.
        let scale = if user.starts_with("pro_") { 3.0 } else { 1.0 }
            * if next(10) == 0 { 0.5 } else { 1.0 };
        let counts: Vec<f64> = set()
            .iter()
            .map(|l| (l.quota().count() * scale).max(1.0))
            .collect();
        let cost = 1 + next(3);
        let keys = [ip, user, user];
        let want = local.inc_with(&keys, &counts, cost).unwrap();
        let rkeys: Vec<RedisKey> = keys
            .iter()
            .map(|k| RedisKey::try_from(*k).unwrap())
            .collect();
        let rkeys: Vec<&RedisKey> = rkeys.iter().collect();
        let got = remote.inc_with(&rkeys, &counts, cost).await.unwrap();
        assert_eq!(
            got, want,
            "call {call}: keys {keys:?}, counts {counts:?}, cost {cost}"
        );
        seen[want.outcome() as usize] += 1;
        if call % 100 == 0 {
            let want = local.check_with(&keys, &counts, 1).unwrap();
            assert_eq!(remote.check_with(&rkeys, &counts, 1).await.unwrap(), want);
        }
    }
    assert!(
        seen.iter().all(|n| *n > 50),
        "every outcome reached: {seen:?}"
    );
    let k = RedisKey::try_from("a").unwrap();
    let err = remote
        .inc_with(&[&k, &k, &k], &[3.0, 0.2, 5.0], 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluicegate::Error::CapacityBelowOne { .. }),
        "{err}"
    );
    assert!(
        remote
            .inc_with(&[&k, &k, &k], &[3.0, 5.0], 1)
            .await
            .is_err()
    );
    assert!(
        remote
            .check_with(&[&k, &k, &k], &[f64::NAN, 5.0, 5.0], 1)
            .await
            .is_err()
    );
}

/// The set script's fast path renews a key's TTLs only when the deadline it recorded no
/// longer covers the new bucket: after every call, fast or slow (a limit at its quota sends
/// calls down set.lua, which opens buckets with exact TTLs of its own), both keys of every
/// limit live at least until their open bucket stops counting, and never longer than a
/// window, a group and a quarter window.
#[tokio::test]
async fn a_sets_keys_always_outlive_their_open_bucket() {
    let redis = support::TestRedis::get();
    let clock = ManualClock::new(5_000_000);
    let rl = on_clock(&redis, &clock).await;
    let prefix = rl.redis().prefix().unwrap().to_owned();
    // 10 ms groups over 1 s: the steady calls below open a bucket nearly every time; the
    // tight limit fills, so some calls need the exact totals (set.lua).
    let p = rl
        .redis()
        .policy("wide = 1000/s; tight = 60/s".parse().unwrap())
        .unwrap();
    let key = RedisKey::try_from("ttl").unwrap();
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut rng = 7u64;
    let (mut admitted, mut refused) = (0, 0);
    for call in 0..400 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        clock.advance(if call % 100 == 99 { 700 } else { 3 + rng % 20 });
        if p.inc(&key, 1).await.unwrap().is_allowed() {
            admitted += 1;
        } else {
            refused += 1;
        }
        let now = clock.now_ms();
        for limit in ["wide", "tight"] {
            let stem = format!("{prefix}:{{ttl}}:p:{limit}:");
            let newest: u64 = redis::cmd("HGET")
                .arg(format!("{stem}h"))
                .arg("n")
                .query_async(&mut conn)
                .await
                .unwrap();
            let needed = ((newest + 1) * 10 + 1000).saturating_sub(now) as i64;
            for k in [format!("{stem}h"), format!("{stem}b")] {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if ttl == -2 {
                    // No closed bucket yet: no list.
                    assert!(k.ends_with('b'), "call {call}: {k} is gone");
                    continue;
                }
                // Real time passes between the call and PTTL: a little slop. (The test
                // clock runs ahead of real time, so the longest TTL is bounded absolutely.)
                assert!(
                    ttl + 200 >= needed && ttl <= 1000 + 10 + 250,
                    "call {call}: {k} ttl {ttl}, its open bucket counts {needed} ms more"
                );
            }
        }
    }
    assert!(
        admitted > 100 && refused > 50,
        "{admitted} admitted, {refused} refused"
    );
}
