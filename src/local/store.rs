//! The key map shared by the in-process providers: one sharded hash map whose shard lock
//! also guards the key's state, keys of up to 24 bytes stored inline.

use compact_str::CompactString;
use dashmap::DashMap;

type Hasher = foldhash::fast::RandomState;

/// Key → per-key state.
///
/// A call takes its shard's write lock for the few nanoseconds it works on the key: one
/// compare-and-swap to lock and one to unlock, where a read lock plus a per-key mutex costs
/// four atomic operations. Keys of one shard wait for each other only that long, and there
/// are many shards per core. The cleanup pass takes the same lock, so it can never remove a
/// key under a running call.
#[derive(Debug)]
pub(crate) struct KeyStore<S> {
    map: DashMap<CompactString, S, Hasher>,
}

impl<S> Default for KeyStore<S> {
    fn default() -> Self {
        KeyStore {
            map: DashMap::with_hasher_and_shard_amount(Hasher::default(), shard_amount()),
        }
    }
}

/// Sixteen shards per core, a power of two as dashmap wants: two threads on different keys
/// rarely meet on a shard lock.
fn shard_amount() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * 16).next_power_of_two()
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
        if let Some(mut entry) = self.map.get_mut(key) {
            return f(entry.value_mut());
        }
        self.with_new(key, create, f)
    }

    /// The first call for a key (or a race to create it): the key is copied only here.
    #[cold]
    fn with_new<R>(&self, key: &str, create: impl FnOnce() -> S, f: impl FnOnce(&mut S) -> R) -> R {
        let mut entry = self
            .map
            .entry(CompactString::from(key))
            .or_insert_with(create);
        f(entry.value_mut())
    }

    /// Runs `f` on the key's state if the key exists; creates nothing.
    #[inline]
    pub(crate) fn peek<R>(&self, key: &str, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        self.map.get_mut(key).map(|mut entry| f(entry.value_mut()))
    }

    /// Keeps the keys for which `keep` holds; gives the freed table space back when the map
    /// has shrunk to under a quarter of its capacity. Returns how many keys were removed.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut S) -> bool) -> usize {
        // Counted as they go: calls may add keys while the pass runs, so the map's length
        // before and after says nothing about how many were removed.
        let mut removed = 0;
        self.map.retain(|_, state| {
            let kept = keep(state);
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

    /// Every key and its state, one shard locked at a time: the hybrid committer's passes.
    #[cfg(feature = "redis-tokio")]
    pub(crate) fn iter_mut(&self) -> dashmap::iter::IterMut<'_, CompactString, S, Hasher> {
        self.map.iter_mut()
    }
}
