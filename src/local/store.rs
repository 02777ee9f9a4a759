//! The key map shared by the in-process providers: a hash table per shard, each behind a
//! spin lock that also guards the keys' state, keys of up to 24 bytes stored inline.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::ops::ControlFlow;

use compact_str::CompactString;
use hashbrown::HashTable;
use spin::mutex::SpinMutex;

type Hasher = foldhash::fast::RandomState;

/// Key → per-key state.
///
/// A call hashes the key once, locks its shard, finds the entry and runs on its state: one
/// compare-and-swap to lock and a plain store to unlock. A sharded `RwLock` map takes a
/// second compare-and-swap to unlock, which was a fifth of a hot-key call (`benches/ratios`).
/// A call holds the lock for the few nanoseconds it works on its key (longer when its insert
/// grows the table); a waiter spins and yields its thread now and then, so a holder that lost
/// its core gets it back. There are at least sixteen shards per core. The cleanup pass and
/// the hybrid committer's passes hold one shard's lock while they walk that shard, so calls
/// to it wait that long; they never remove a key under a running call.
pub(crate) struct KeyStore<S> {
    hasher: Hasher,
    shards: Box<[Shard<S>]>,
    /// `64 - log2(shards)`: a hash's shard is taken from its bits below the top seven, which
    /// the tables use as tags on 64-bit targets (on 32-bit ones the two do not overlap
    /// either).
    shift: u32,
}

/// One shard on cache lines of its own, so shards' locks never share a line.
#[repr(align(128))]
struct Shard<S>(SpinMutex<HashTable<(CompactString, S)>, Backoff>);

/// How a waiter spins: a pause per try, and a yield of its thread every 64 tries.
struct Backoff;

impl spin::RelaxStrategy for Backoff {
    #[inline]
    fn relax() {
        thread_local!(static TRIES: Cell<u32> = const { Cell::new(0) });
        let tries = TRIES.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n
        });
        if tries % 64 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

impl<S> std::fmt::Debug for KeyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("shards", &self.shards.len())
            .field("keys", &self.len())
            .finish()
    }
}

impl<S> Default for KeyStore<S> {
    fn default() -> Self {
        let count = shard_amount();
        KeyStore {
            hasher: Hasher::default(),
            shards: (0..count)
                .map(|_| Shard(SpinMutex::new(HashTable::new())))
                .collect(),
            shift: 64 - count.trailing_zeros(),
        }
    }
}

/// At least sixteen shards per core, a power of two: two threads on different keys rarely meet on a
/// shard lock.
fn shard_amount() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * 16).next_power_of_two()
}

impl<S> KeyStore<S> {
    #[inline]
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &SpinMutex<HashTable<(CompactString, S)>, Backoff> {
        // A single shard has shift 64, which `checked_shr` turns into index 0.
        let index = (hash << 7).checked_shr(self.shift).unwrap_or(0) as usize;
        &self.shards[index].0
    }

    /// Runs `f` on the key's state, creating it with `create` if the key is new.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &str,
        create: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        let hash = self.hash(key);
        let mut table = self.shard(hash).lock();
        if let Some(entry) = table.find_mut(hash, |e| e.0 == key) {
            return f(&mut entry.1);
        }
        self.insert(&mut table, hash, key, create, f)
    }

    /// The first call for a key: the key is copied only here, under the shard's lock.
    #[cold]
    fn insert<R>(
        &self,
        table: &mut HashTable<(CompactString, S)>,
        hash: u64,
        key: &str,
        create: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        let hasher = &self.hasher;
        let mut entry = table.insert_unique(hash, (CompactString::from(key), create()), |e| {
            hasher.hash_one(e.0.as_str())
        });
        f(&mut entry.get_mut().1)
    }

    /// Locks the key's shard and keeps it locked until the returned guard drops: for a caller
    /// that decides on several keys of different stores at once (a limit set). Such a caller
    /// must lock its stores in one fixed order, so that two callers never wait on each other.
    #[inline]
    pub(crate) fn lock(&self, key: &str) -> Locked<'_, S> {
        let hash = self.hash(key);
        Locked {
            table: self.shard(hash).lock(),
            hash,
            hasher: &self.hasher,
        }
    }

    /// Runs `f` on the key's state if the key exists; creates nothing.
    #[inline]
    pub(crate) fn peek<R>(&self, key: &str, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        let hash = self.hash(key);
        let mut table = self.shard(hash).lock();
        table.find_mut(hash, |e| e.0 == key).map(|e| f(&mut e.1))
    }

    /// Keeps the keys for which `keep` holds, one shard locked at a time; gives a shard's
    /// freed table space back once it has shrunk to under a quarter of its capacity.
    /// Returns how many keys were removed.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&mut S) -> bool) -> usize {
        // Counted as they go: calls may add keys to other shards while the pass runs.
        let mut removed = 0;
        let hasher = &self.hasher;
        let _ = self.each_shard(|table| {
            table.retain(|e| {
                let kept = keep(&mut e.1);
                removed += usize::from(!kept);
                kept
            });
            if table.len() * 4 < table.capacity() {
                table.shrink_to_fit(|e| hasher.hash_one(e.0.as_str()));
            }
            ControlFlow::Continue(())
        });
        removed
    }

    /// Runs `f` on each shard's table in turn, its lock held, until `f` breaks: the one
    /// walk over every key (cleanup's, and the hybrid committer's passes).
    pub(crate) fn each_shard(
        &self,
        mut f: impl FnMut(&mut HashTable<(CompactString, S)>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for shard in self.shards.iter() {
            f(&mut shard.0.lock())?;
        }
        ControlFlow::Continue(())
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

/// A key's shard, locked: find, insert or remove that one key.
pub(crate) struct Locked<'a, S> {
    table: spin::mutex::SpinMutexGuard<'a, HashTable<(CompactString, S)>>,
    hash: u64,
    hasher: &'a Hasher,
}

impl<S> Locked<'_, S> {
    /// The key's state, if it exists.
    #[inline]
    pub(crate) fn get(&mut self, key: &str) -> Option<&mut S> {
        self.table
            .find_mut(self.hash, |e| e.0 == key)
            .map(|e| &mut e.1)
    }

    /// The key's state, created empty if the key is new.
    #[inline]
    pub(crate) fn get_or_default(&mut self, key: &str) -> &mut S
    where
        S: Default,
    {
        let hasher = self.hasher;
        match self
            .table
            .entry(self.hash, |e| e.0 == key, |e| hasher.hash_one(e.0.as_str()))
        {
            hashbrown::hash_table::Entry::Occupied(entry) => &mut entry.into_mut().1,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                &mut entry
                    .insert((CompactString::from(key), S::default()))
                    .into_mut()
                    .1
            }
        }
    }

    /// The key's state, created by `create` if the key is new (the hybrid limit sets, whose
    /// states are built from the call).
    #[cfg(feature = "redis-tokio")]
    #[inline]
    pub(crate) fn get_or_insert_with(&mut self, key: &str, create: impl FnOnce() -> S) -> &mut S {
        let hasher = self.hasher;
        &mut self
            .table
            .entry(self.hash, |e| e.0 == key, |e| hasher.hash_one(e.0.as_str()))
            .or_insert_with(|| (CompactString::from(key), create()))
            .into_mut()
            .1
    }
}

/// Several keys' shards of one store, locked together: for a caller that decides on several
/// keys at once (a limit set whose limits have different keys). Each shard is locked once, in
/// the order of the shards' addresses, the one order every such caller uses; a one-key
/// caller holds one lock and waits for no other, so no two callers ever wait on each other.
pub(crate) struct LockedKeys<'a, S, const N: usize> {
    /// One guard per distinct shard, in locking order.
    guards: [Option<spin::mutex::SpinMutexGuard<'a, HashTable<(CompactString, S)>>>; N],
    /// Key `i`'s hash and the guard of its shard.
    at: [(u64, usize); N],
    hasher: &'a Hasher,
}

impl<S> KeyStore<S> {
    /// Locks the shards of `keys` (see [`LockedKeys`]) until the returned guard drops.
    pub(crate) fn lock_keys<const N: usize>(&self, keys: &[&str; N]) -> LockedKeys<'_, S, N> {
        let hashes: [u64; N] = std::array::from_fn(|i| self.hash(keys[i]));
        let address = |i: usize| std::ptr::from_ref(self.shard(hashes[i])) as usize;
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| address(i));
        let mut guards = std::array::from_fn(|_| None);
        let mut at = [(0, 0); N];
        let mut held = 0;
        for (n, &i) in order.iter().enumerate() {
            if n == 0 || address(i) != address(order[n - 1]) {
                guards[held] = Some(self.shard(hashes[i]).lock());
                held += 1;
            }
            at[i] = (hashes[i], held - 1);
        }
        LockedKeys {
            guards,
            at,
            hasher: &self.hasher,
        }
    }
}

impl<S, const N: usize> LockedKeys<'_, S, N> {
    /// Key `i`'s state (`key` is `keys[i]` of the lock), if it exists.
    #[inline]
    pub(crate) fn get(&mut self, i: usize, key: &str) -> Option<&mut S> {
        let (hash, guard) = self.at[i];
        let table = self.guards[guard].as_mut().expect("locked");
        table.find_mut(hash, |e| e.0 == key).map(|e| &mut e.1)
    }

    /// Key `i`'s state, created empty if the key is new.
    pub(crate) fn get_or_default(&mut self, i: usize, key: &str) -> &mut S
    where
        S: Default,
    {
        let (hash, guard) = self.at[i];
        let hasher = self.hasher;
        let table = self.guards[guard].as_mut().expect("locked");
        match table.entry(hash, |e| e.0 == key, |e| hasher.hash_one(e.0.as_str())) {
            hashbrown::hash_table::Entry::Occupied(entry) => &mut entry.into_mut().1,
            hashbrown::hash_table::Entry::Vacant(entry) => {
                &mut entry
                    .insert((CompactString::from(key), S::default()))
                    .into_mut()
                    .1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_created_counted_and_removed() {
        let store = KeyStore::<u64>::default();
        for i in 0..10_000u64 {
            store.with(&format!("key-{i}"), || i, |s| *s += 1);
        }
        assert_eq!(store.len(), 10_000);
        assert_eq!(store.peek("key-17", |s| *s), Some(18));
        assert_eq!(store.peek("missing", |s| *s), None);
        assert_eq!(store.len(), 10_000, "peek creates nothing");
        // Long keys (past the inline 24 bytes) are found the same way.
        let long = "k".repeat(1 << 20);
        store.with(&long, || 7, |_| ());
        assert_eq!(store.peek(&long, |s| *s), Some(7));
        // Odd states go: half the numbered keys and the long one.
        assert_eq!(store.retain(|s| *s % 2 == 0), 5_001);
        assert_eq!(store.len(), 5_000);
        assert_eq!(store.peek("key-17", |s| *s), Some(18));
        assert_eq!(store.peek("key-16", |s| *s), None);
    }

    #[test]
    fn several_keys_lock_together_without_deadlock() {
        let store = KeyStore::<u64>::default();
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        // Threads lock overlapping triples in different orders (some keys share a shard);
        // every update lands and none waits forever.
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (store, keys) = (&store, &keys);
                s.spawn(move || {
                    for i in 0..20_000usize {
                        let pick = |j: usize| keys[(i * (t + 1) + j * 7) % keys.len()].as_str();
                        let triple = [pick(0), pick(1 + t), pick(2)];
                        let mut locked = store.lock_keys(&triple);
                        for (k, key) in triple.iter().enumerate() {
                            *locked.get_or_default(k, key) += 1;
                        }
                        drop(locked);
                        store.with(pick(3), || 0, |n| *n += 1);
                    }
                });
            }
        });
        let total: u64 = keys
            .iter()
            .map(|k| store.peek(k, |n| *n).unwrap_or(0))
            .sum();
        assert_eq!(total, 4 * 20_000 * 4);
        let mut locked = store.lock_keys(&["k1", "missing"]);
        assert!(locked.get(0, "k1").is_some());
        assert!(locked.get(1, "missing").is_none(), "get creates nothing");
    }

    #[test]
    fn threads_on_one_key_lose_no_update() {
        let store = KeyStore::<u64>::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50_000 {
                        store.with("hot", || 0, |n| *n += 1);
                    }
                });
            }
        });
        assert_eq!(store.peek("hot", |n| *n), Some(200_000));
    }
}
