//! What the hybrid key tests share: a 10 s window of 100 ms groups, a call of 10/s
//! (capacity 100), a server clock 1 000 000 ms ahead of the local one.

use super::mode::{Conditions, Now, Refresh, View};
use crate::call::Call;
use crate::settings::SuppressionParams;
use crate::window::WindowGrid;

pub(super) const PARAMS: SuppressionParams = SuppressionParams {
    hard_limit_factor: 1.5,
    cache_ms: 0,
};

pub(super) fn geo() -> WindowGrid {
    WindowGrid::for_tests(10, 100)
}

pub(super) fn ctx(grid: &WindowGrid, healthy: bool) -> Conditions<'_> {
    Conditions {
        grid,
        params: &PARAMS,
        sync_ms: 10,
        healthy,
    }
}

pub(super) fn at(ms: u64) -> Now {
    Now {
        local: ms,
        server: 1_000_000 + ms,
    }
}

/// 10/s over 10 s: capacity 100.
pub(super) fn call(now: Now, count: u64) -> Call {
    Call {
        now_ms: now.server,
        rate: 10.0,
        count,
        cap: 100.0,
    }
}

pub(super) fn view(lease: f64, used: u64, holders: u64, now: Now) -> Refresh {
    Refresh {
        view: View {
            lease,
            used,
            holders,
            cap: 100.0,
            observed: used,
            recent: 0,
            at: now.server,
            valid_until: now.local + 200,
        },
        oldest: Vec::new(),
    }
}
