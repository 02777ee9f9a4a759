//! Several instances, each with its own connection, racing on one key through the
//! production path (server `TIME`): the window admits exactly its capacity.
#![cfg(feature = "redis-tokio")]

mod support;

use std::sync::Arc;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisConnection, RedisKey};
use sluicegate::{RateLimit, RateLimiter, RateLimiterBuilder};

const INSTANCES: usize = 4;
const TASKS: usize = 16;
const CALLS_PER_TASK: usize = 100;

fn instance(conn: RedisConnection, prefix: &RedisKey) -> RateLimiter {
    let local = LocalRateLimiterOptions {
        window_size_seconds: 60.try_into().unwrap(),
        rate_group_size_ms: 10.try_into().unwrap(),
        hard_limit_factor: 1.5.try_into().unwrap(),
        suppression_factor_cache_ms: Default::default(),
    };
    RateLimiterBuilder::new(local)
        .redis_connection(
            conn,
            support::redis_settings(&local, prefix, SyncIntervalMs::default()),
        )
        .build()
        .unwrap()
}

/// Runs 16 tasks over the instances (task `i` on instance `i % 4`); returns admitted counts.
pub async fn race(instances: Vec<Arc<RateLimiter>>, count: u64) -> u64 {
    let key = RedisKey::try_from("contended").unwrap();
    let rate = RateLimit::try_from(10.0).unwrap(); // 600 a window
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let rl = instances[t % instances.len()].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..CALLS_PER_TASK {
                if support::admitted(rl.redis().absolute().inc(&key, &rate, count)).await {
                    admitted += count;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_sixteen_tasks_admit_exactly_the_capacity() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("exact");
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        // Each instance has its own connection, as separate processes would.
        instances.push(Arc::new(instance(redis.manager().await.into(), &prefix)));
    }
    // 1600 attempts at 10/s over 60 s: exactly 600 admitted, by whichever instance.
    assert_eq!(race(instances, 1).await, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_with_multi_unit_calls_too() {
    let redis = support::TestRedis::get();
    let prefix = support::unique_prefix("exact3");
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(Arc::new(instance(redis.manager().await.into(), &prefix)));
    }
    // Calls of 7 units: 85 fit (595), an 86th would make 602.
    assert_eq!(race(instances, 7).await, 595);
}
