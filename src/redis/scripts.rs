//! The Lua scripts, each one atomic round trip: `src/redis/lua/head.lua` (arguments, the
//! time), the strategy's hot path (`*_hot.lua`: an admitted call in the open bucket, with no
//! closure created), `window.lua` (the sliding window of `src/window.rs`) and the rest of
//! the strategy. The hot path comes before the helpers because defining them costs each
//! call server time (measured: the hot path's server time fell by about a third).
//!
//! Both run through [`redis::Script`](::redis::Script): `EVALSHA`, with `SCRIPT LOAD` and one
//! retry when the server answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use ::redis::Script;

/// The absolute strategy: `{0}` or `{1, retry_after_ms, remaining_after_waiting}`.
pub(crate) static ABSOLUTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/head.lua"),
        include_str!("lua/absolute_hot.lua"),
        include_str!("lua/window.lua"),
        include_str!("lua/absolute.lua")
    ))
});

/// The suppressed strategy: `{0}` or `{1, is_allowed, factor}` for an increment, the factor
/// as a string for a query.
pub(crate) static SUPPRESSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/head.lua"),
        include_str!("lua/suppressed_hot.lua"),
        include_str!("lua/window.lua"),
        include_str!("lua/factor.lua"),
        include_str!("lua/suppressed.lua")
    ))
});

/// A limit set decided in one call: `head.lua`, the hot path `set_hot.lua` (every limit
/// admits into its open bucket), `window.lua`, `factor.lua`, then `set.lua`.
pub(crate) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/head.lua"),
        include_str!("lua/set_hot.lua"),
        include_str!("lua/window.lua"),
        include_str!("lua/factor.lua"),
        include_str!("lua/set.lua")
    ))
});
