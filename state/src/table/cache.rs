//! The owner's cache of committed latest values: a bounded map from key to
//! its latest committed value (or its absence), evicted by CLOCK.
//!
//! It sits in front of RocksDB on the owner's read-modify-write path, so it
//! is looked up once per processed record. An LRU list (the `lru` crate,
//! used before) relinks three list nodes on every hit, each a likely cache
//! miss on a large table; CLOCK sets one bit in the slot it already reads.
//! Measured on this machine with 100,000 keys in four caches of 50,000
//! (random hits): LRU `get` 222 ns, this `get` about 90 ns, close to a bare
//! hash map's.
//!
//! Slots live in a vector (the clock), indexed by a hash table of slot
//! numbers; a full cache replaces the first slot the hand finds that was not
//! used since the hand last passed it.

use std::hash::BuildHasher;

use hashbrown::HashTable;

struct Slot {
    hash: u64,
    key: Box<[u8]>,
    /// `None`: the key is absent (or deleted).
    value: Option<Box<[u8]>>,
    /// Used since the hand last passed.
    referenced: bool,
}

pub(crate) struct LatestCache {
    index: HashTable<u32>,
    slots: Vec<Slot>,
    hasher: foldhash::fast::RandomState,
    hand: usize,
    capacity: usize,
}

impl LatestCache {
    /// A cache of at most `capacity` keys; `None` for 0 (no cache).
    pub fn new(capacity: usize) -> Option<LatestCache> {
        // Slot numbers are u32s.
        let capacity = capacity.min(u32::MAX as usize);
        (capacity > 0).then(|| LatestCache {
            index: HashTable::new(),
            slots: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
            hand: 0,
            capacity,
        })
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                let s = &slots[i as usize];
                s.hash == hash && *s.key == *key
            })
            .map(|&i| i as usize)
    }

    /// The cached value of `key`: `Some(None)` when it is cached as absent,
    /// `None` when it is not cached. Marks it used.
    pub fn get(&mut self, key: &[u8]) -> Option<Option<&[u8]>> {
        let hash = self.hasher.hash_one(key);
        let i = self.find(hash, key)?;
        let s = &mut self.slots[i];
        s.referenced = true;
        Some(s.value.as_deref())
    }

    /// Caches `value` for `key` (replacing any cached value), evicting a
    /// key if the cache is full.
    pub fn insert(&mut self, key: &[u8], value: Option<&[u8]>) {
        let hash = self.hasher.hash_one(key);
        if let Some(i) = self.find(hash, key) {
            let s = &mut self.slots[i];
            s.value = value.map(Box::from);
            s.referenced = true;
            return;
        }
        let slot = Slot {
            hash,
            key: Box::from(key),
            value: value.map(Box::from),
            referenced: true,
        };
        let i = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let i = self.evict();
            self.slots[i] = slot;
            i
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i as u32, |&j| slots[j as usize].hash);
    }

    /// Replaces the cached value of `key` if it is cached, without marking
    /// it used (a committed write must not make a key look hot).
    pub fn refresh(&mut self, key: &[u8], value: Option<&[u8]>) {
        let hash = self.hasher.hash_one(key);
        if let Some(i) = self.find(hash, key) {
            let s = &mut self.slots[i];
            match (&mut s.value, value) {
                // Same length: overwrite in place, no allocation.
                (Some(old), Some(new)) if old.len() == new.len() => old.copy_from_slice(new),
                (old, new) => *old = new.map(Box::from),
            }
        }
    }

    /// Advances the hand to a slot not used since its last pass, unindexes
    /// it and returns its number. Only called when full (slots not empty).
    fn evict(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let s = &mut self.slots[i];
            if s.referenced {
                s.referenced = false;
                continue;
            }
            let hash = s.hash;
            if let Ok(e) = self.index.find_entry(hash, |&j| j as usize == i) {
                e.remove();
            }
            return i;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.hand = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn caches_values_and_absence() {
        let mut c = LatestCache::new(4).unwrap();
        assert_eq!(c.get(b"a"), None);
        c.insert(b"a", Some(b"1"));
        c.insert(b"b", None);
        assert_eq!(c.get(b"a"), Some(Some(&b"1"[..])));
        assert_eq!(c.get(b"b"), Some(None));
        c.insert(b"a", Some(b"22"));
        assert_eq!(c.get(b"a"), Some(Some(&b"22"[..])));
        assert_eq!(c.len(), 2);
        c.clear();
        assert_eq!(c.get(b"a"), None);
        assert!(LatestCache::new(0).is_none());
    }

    #[test]
    fn refresh_changes_only_cached_keys() {
        let mut c = LatestCache::new(4).unwrap();
        c.insert(b"a", Some(b"1"));
        c.refresh(b"a", Some(b"2"));
        c.refresh(b"b", Some(b"9"));
        c.refresh(b"a", Some(b"333"));
        assert_eq!(c.get(b"a"), Some(Some(&b"333"[..])));
        assert_eq!(c.get(b"b"), None);
        c.refresh(b"a", None);
        assert_eq!(c.get(b"a"), Some(None));
    }

    #[test]
    fn a_full_cache_keeps_keys_in_use() {
        let mut c = LatestCache::new(3).unwrap();
        c.insert(b"a", Some(b"1"));
        c.insert(b"b", Some(b"2"));
        c.insert(b"c", Some(b"3"));
        // The hand clears every bit, then evicts `a`; `d` takes its slot.
        c.insert(b"d", Some(b"4"));
        assert_eq!(c.get(b"a"), None);
        assert_eq!(c.len(), 3);
        // `b` is used again, so the next eviction passes it and takes `c`.
        assert!(c.get(b"b").is_some());
        c.insert(b"e", Some(b"5"));
        assert!(c.get(b"b").is_some());
        assert_eq!(c.get(b"c"), None);
        assert!(c.get(b"d").is_some());
        assert!(c.get(b"e").is_some());
    }

    proptest! {
        /// Against a plain map: whatever the cache holds is what was last
        /// written for that key, it never holds more than its capacity, and
        /// a key just inserted is always there.
        #[test]
        fn agrees_with_a_map(
            cap in 1usize..8,
            ops in proptest::collection::vec((0u8..3, 0u8..12, proptest::option::of(0u8..4)), 1..200),
        ) {
            let mut c = LatestCache::new(cap).unwrap();
            let mut truth = std::collections::HashMap::new();
            for (op, k, v) in ops {
                let key = [k];
                let val = v.map(|v| vec![v; v as usize + 1]);
                match op {
                    0 => {
                        c.insert(&key, val.as_deref());
                        truth.insert(k, val.clone());
                        prop_assert_eq!(c.get(&key), Some(val.as_deref()));
                    }
                    1 => {
                        c.refresh(&key, val.as_deref());
                        if c.get(&key).is_some() {
                            truth.insert(k, val.clone());
                        }
                    }
                    _ => {
                        if let Some(got) = c.get(&key) {
                            prop_assert_eq!(got, truth.get(&k).unwrap().as_deref());
                        }
                    }
                }
                prop_assert!(c.len() <= cap);
            }
        }
    }
}
