//! `RateLimitLayer`: the tower/axum middleware over the limiter core.
