//! [`RateLimitInfo`]: the layer's decision, handed to the handler as a request extension.

use std::sync::Arc;

/// What the layer decided for an admitted request, as a request extension: read it in an
/// axum handler with `Extension<RateLimitInfo>` (or `req.extensions().get()`). Present
/// only with [`decision_extension(true)`](super::RateLimitLayerBuilder::decision_extension).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// The policy that decided (the tightest of a set: the one with the least quota left).
    pub policy: Arc<str>,
    /// Units the key may still use in the window after this request, where the provider
    /// knows it (the local one); `None` otherwise.
    pub remaining: Option<u64>,
    /// The key's suppression factor in `[0, 1]`: 0 unless the suppressed strategy is
    /// shedding some of its requests.
    pub suppression_factor: f64,
    /// Whether shadow mode let this request through although a limit would have refused it.
    pub shadow_refused: bool,
    /// Whether the request was exempt (no limit counted it).
    pub exempt: bool,
}
