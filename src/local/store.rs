//! The key map shared by the in-process providers: one sharded hash map, one small mutex
//! per key, keys of up to 24 bytes stored inline.

use compact_str::CompactString;
use dashmap::DashMap;
use parking_lot::Mutex;

type Hasher = foldhash::fast::RandomState;

/// Key → per-key state. A call holds its shard's read lock while it works on the key, so the
/// cleanup pass (which takes the write lock) can never remove a key under a running call.
#[derive(Debug)]
pub(crate) struct KeyStore<S> {
    map: DashMap<CompactString, Mutex<S>, Hasher>,
}

impl<S> Default for KeyStore<S> {
    fn default() -> Self {
        KeyStore {
            map: DashMap::with_hasher(Hasher::default()),
        }
    }
}

impl<S> KeyStore<S> {
    /// Runs `f` on the key's state, creating it with `create` if the key is new.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &str,
        create: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        if let Some(entry) = self.map.get(key) {
            return f(&mut entry.lock());
        }
        let mut entry = self
            .map
            .entry(CompactString::from(key))
            .or_insert_with(|| Mutex::new(create()));
        f(entry.value_mut().get_mut())
    }

    /// Runs `f` on the key's state if the key exists; creates nothing.
    #[inline]
    pub(crate) fn peek<R>(&self, key: &str, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        self.map.get(key).map(|entry| f(&mut entry.lock()))
    }

    /// Keeps the keys for which `keep` holds; gives the freed table space back when the map
    /// has shrunk to under a quarter of its capacity. Returns how many keys were removed.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut S) -> bool) -> usize {
        // Counted as they go: calls may add keys while the pass runs, so the map's length
        // before and after says nothing about how many were removed.
        let mut removed = 0;
        self.map.retain(|_, state| {
            let kept = keep(state.get_mut());
            removed += usize::from(!kept);
            kept
        });
        if self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to_fit();
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
