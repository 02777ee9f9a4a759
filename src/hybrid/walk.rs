//! The committer's passes over a key store, one shard locked at a time.

use std::ops::ControlFlow;

use compact_str::CompactString;

use crate::local::store::KeyStore;

/// Runs `f` on every key and its state.
pub(super) fn for_each<S>(store: &KeyStore<S>, mut f: impl FnMut(&CompactString, &mut S)) {
    let _ = try_for_each(store, |key, state| {
        f(key, state);
        ControlFlow::Continue(())
    });
}

/// [`for_each`] until `f` breaks.
pub(super) fn try_for_each<S>(
    store: &KeyStore<S>,
    mut f: impl FnMut(&CompactString, &mut S) -> ControlFlow<()>,
) -> ControlFlow<()> {
    store.each_shard(|table| {
        for (key, state, _) in table.iter_mut() {
            f(key, state)?;
        }
        ControlFlow::Continue(())
    })
}
