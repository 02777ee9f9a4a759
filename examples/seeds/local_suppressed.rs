use std::sync::Arc;
use sluicegate::{
HardLimitFactor, RateGroupSizeMs, RateLimit, RateLimitDecision,
RateLimiter, RateLimiterOptions, SuppressionFactorCacheMs, WindowSizeSeconds,
};
use sluicegate::local::LocalRateLimiterOptions;
fn main() {
let rl = Arc::new(RateLimiter::new(RateLimiterOptions {
local: LocalRateLimiterOptions {
window_size_seconds: WindowSizeSeconds::try_from(60).unwrap(),
rate_group_size_ms: RateGroupSizeMs::try_from(10).unwrap(),
// 1.5 = 50% burst headroom before full suppression
hard_limit_factor: HardLimitFactor::try_from(1.5).unwrap(),
suppression_factor_cache_ms: SuppressionFactorCacheMs::default(),
},
}));
rl.run_cleanup_loop();
// 10 req/s target. With hard_limit_factor = 1.5:
// Soft limit (window) = 60 * 10 = 600 requests
// Hard limit (window) = 60 * 10 * 1.5 = 900 requests
let rate = RateLimit::try_from(10.0).unwrap();
match rl.local().suppressed().inc("user_123", &rate, 1) {
RateLimitDecision::Allowed => {
// Below capacity. Proceed normally.
println!("Allowed");
}
RateLimitDecision::Suppressed { is_allowed: true, suppression_factor } => {
// Suppression is active, but this request passed through.
// Proceed, but consider logging the factor for monitoring.
println!("Allowed (suppression at {:.0}%)", suppression_factor * 100.0);
}
RateLimitDecision::Suppressed { is_allowed: false, suppression_factor } => {
// This request was denied. Do NOT proceed.
// When factor is 1.0, the key is over the hard limit.
println!("Denied (suppression at {:.0}%)", suppression_factor * 100.0);
}
RateLimitDecision::Rejected { .. } => {
// The suppressed strategy never returns Rejected.
unreachable!();
}
}
}
