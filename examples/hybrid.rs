//! The seed's hybrid quickstart, with `sluicegate` for `trypema`, the server address from
//! `SLUICEGATE_REDIS_URL` (default `redis://127.0.0.1:6379/`), and errors reported instead
//! of `unwrap`ped.
//!
//! ```sh
//! redis-server --port 6379 --save "" --appendonly no &
//! cargo run --example hybrid --features redis-tokio
//! ```

#[path = "common/redis.rs"]
mod common;

use sluicegate::hybrid::SyncIntervalMs;
use sluicegate::local::LocalRateLimiterOptions;
use sluicegate::redis::{RedisKey, RedisRateLimiterOptions};
use sluicegate::{
    HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision, RateLimiter,
    RateLimiterOptions, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hybrid example: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (connection_manager, _) = common::connect().await?;
    let window_size_seconds = WindowSizeSeconds::try_from(60)?;
    let rate_group_size_ms = RateGroupSizeMs::try_from(10)?;
    let hard_limit_factor = HardLimitFactor::try_from(1.5)?;
    let suppression_factor_cache_ms = SuppressionFactorCacheMs::default();
    let sync_interval_ms = SyncIntervalMs::try_from(10)?; // flush every 10ms
    let rl = Arc::new(RateLimiter::new(RateLimiterOptions {
        local: LocalRateLimiterOptions {
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
        },
        redis: RedisRateLimiterOptions {
            connection_manager,
            prefix: None,
            window_size_seconds,
            rate_group_size_ms,
            hard_limit_factor,
            suppression_factor_cache_ms,
            sync_interval_ms,
        },
    }));
    rl.run_cleanup_loop();
    let key = RedisKey::try_from("user_123".to_string())?;
    let rate = RateLimit::try_from(10.0)?;
    // Absolute strategy — same API as Redis, but served from local state.
    match rl.hybrid().absolute().inc(&key, &rate, 1).await? {
        RateLimitDecision::Allowed => println!("Allowed"),
        RateLimitDecision::Rejected { retry_after_ms, .. } => {
            println!("Rejected. Retry in ~{}ms.", retry_after_ms);
        }
        RateLimitDecision::Suppressed { .. } => unreachable!(),
    }
    // Suppressed strategy — probabilistic admission from local state.
    match rl.hybrid().suppressed().inc(&key, &rate, 1).await? {
        RateLimitDecision::Allowed => println!("Allowed (below capacity)"),
        RateLimitDecision::Suppressed {
            is_allowed,
            suppression_factor,
        } => {
            if is_allowed {
                println!(
                    "Allowed (suppression at {:.0}%)",
                    suppression_factor * 100.0
                );
            } else {
                println!("Denied (suppression at {:.0}%)", suppression_factor * 100.0);
            }
        }
        RateLimitDecision::Rejected { .. } => unreachable!(),
    }
    // Query suppression factor for observability.
    let factor = rl
        .hybrid()
        .suppressed()
        .get_suppression_factor(&key)
        .await?;
    println!("Current suppression factor: {:.3}", factor);
    Ok(())
}
