//! The committer's passes over a key store: [`KeyStore::walk`], one shard locked at a time
//! and a bounded number of keys per lock hold.

use std::ops::ControlFlow;

use compact_str::CompactString;

use crate::local::store::KeyStore;

/// Runs `f` on every key and its state.
pub(super) fn for_each<S>(store: &KeyStore<S>, mut f: impl FnMut(&CompactString, &mut S)) {
    let _ = store.walk(|key, state| {
        f(key, state);
        ControlFlow::Continue(())
    });
}

/// [`for_each`] until `f` breaks.
pub(super) fn try_for_each<S>(
    store: &KeyStore<S>,
    f: impl FnMut(&CompactString, &mut S) -> ControlFlow<()>,
) -> ControlFlow<()> {
    store.walk(f)
}
