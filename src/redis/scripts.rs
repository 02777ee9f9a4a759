//! The Lua scripts, each one atomic round trip: `src/redis/lua/window.lua` (the sliding
//! window of `src/window.rs`) prepended to each strategy's script.
//!
//! Both run through [`redis::Script`](::redis::Script): `EVALSHA`, with `SCRIPT LOAD` and one
//! retry when the server answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use ::redis::Script;

/// Argument positions shared by both scripts (1-based, as Lua sees them in `ARGV`).
pub(crate) mod argv {
    /// Mode of the absolute script: record an increment.
    pub(crate) const ABSOLUTE_INC: &str = "i";
    /// Mode of the absolute script: check one unit, record nothing.
    pub(crate) const ABSOLUTE_CHECK: &str = "c";
    /// Mode of the suppressed script: record an increment.
    pub(crate) const SUPPRESSED_INC: &str = "i";
    /// Mode of the suppressed script: the factor now, record nothing.
    pub(crate) const SUPPRESSED_FACTOR: &str = "f";
}

/// The absolute strategy: `{0}` or `{1, retry_after_ms, remaining_after_waiting}`.
pub(crate) static ABSOLUTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/window.lua"),
        include_str!("lua/absolute.lua")
    ))
});

/// The suppressed strategy: `{0}` or `{1, is_allowed, factor}` for an increment, the factor
/// as a string for a query.
pub(crate) static SUPPRESSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/window.lua"),
        include_str!("lua/suppressed.lua")
    ))
});
