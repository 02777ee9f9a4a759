//! The Redis provider: limits shared by every process that talks to one Redis.
//!
//! ```sh
//! redis-server --port 6379 --save "" --appendonly no &
//! cargo run --example redis --features redis-tokio
//! # or point it elsewhere on this machine:
//! SLUICEGATE_REDIS_URL=redis://127.0.0.1:6380/ cargo run --example redis --features redis-tokio
//! ```

#[path = "common/redis.rs"]
mod common;

use std::process::ExitCode;
use std::sync::Arc;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterOptions, SuppressionFactorCacheMs, WindowSizeSeconds,
};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redis example: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (connection_manager, _) = common::connect().await?;

    let window_size_seconds = WindowSizeSeconds::try_from(10)?;
    let rate_group_size_ms = RateGroupSizeMs::try_from(100)?;
    let hard_limit_factor = HardLimitFactor::try_from(1.5)?;
    let suppression_factor_cache_ms = SuppressionFactorCacheMs::default();
    let rl = Arc::new(RateLimiter::new(RateLimiterOptions {
        local: LocalRateLimiterOptions {
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
        },
        redis: RedisRateLimiterOptions {
            connection_manager,
            // Separates this demo's keys from anything else on the server.
            prefix: Some(RedisKey::try_from(format!(
                "example_{}",
                std::process::id()
            ))?),
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
            sync_interval_ms: SyncIntervalMs::default(),
        },
    }));

    // Absolute: 0.5/s over 10 s is 5 requests a window, shared by every instance.
    let key = RedisKey::try_from("user_123")?;
    let rate = RateLimit::try_from(0.5)?;
    for i in 1..=7 {
        match rl.redis().absolute().inc(&key, &rate, 1).await? {
            RateLimitDecision::Allowed => println!("absolute   #{i}: allowed"),
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                ..
            } => println!(
                "absolute   #{i}: rejected, retry in {retry_after_ms} ms \
                 ({remaining_after_waiting} still counted then)"
            ),
            RateLimitDecision::Suppressed { .. } => unreachable!("absolute never suppresses"),
        }
    }

    // Suppressed: past 5 a window calls are shed with probability = the factor, and over
    // 7.5 (the hard limit) all of them are.
    for i in 1..=10 {
        match rl.redis().suppressed().inc(&key, &rate, 1).await? {
            RateLimitDecision::Allowed => println!("suppressed #{i}: allowed"),
            RateLimitDecision::Suppressed {
                is_allowed,
                suppression_factor,
            } => println!(
                "suppressed #{i}: {} (factor {suppression_factor:.2})",
                if is_allowed { "admitted" } else { "shed" }
            ),
            RateLimitDecision::Rejected { .. } => unreachable!("suppressed never rejects"),
        }
    }
    let factor = rl.redis().suppressed().get_suppression_factor(&key).await?;
    println!("suppression factor now: {factor:.3}");
    Ok(())
}
