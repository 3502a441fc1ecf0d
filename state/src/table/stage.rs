//! Staged mutations of one table partition: written by its owner, readable
//! by its owner (read-your-writes), invisible to everyone else until
//! committed.
//!
//! Under [`Granularity::PerMutation`] every staged mutation becomes a
//! version; under [`Granularity::PerCommit`] a later mutation of a key
//! replaces the earlier one, so each key yields at most one version per
//! commit.
//!
//! The index hashes with foldhash, not the standard library's SipHash: it
//! is looked up twice per processed record (read, then stage), and keys come
//! from the owner's own input, whose flooding would cost the owner only.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::config::Granularity;
use crate::types::{Lineage, VersionFlags};

/// One staged mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Staged {
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    pub lineage: Option<Lineage>,
    pub flags: VersionFlags,
}

/// Most entries a fresh log reserves after a commit.
const MAX_RESERVED: usize = 65_536;

#[derive(Debug)]
pub(crate) struct Staging {
    granularity: Granularity,
    log: Vec<Staged>,
    /// Position in `log` of each key's latest mutation, found by the key
    /// stored in the log (the index holds no copy of it).
    index: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
}

impl Staging {
    pub fn new(granularity: Granularity) -> Staging {
        Staging {
            granularity,
            log: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Stages a mutation of `key`. Under per-commit versioning a key staged
    /// already is overwritten in place (its key bytes are reused).
    pub fn stage(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        lineage: Option<Lineage>,
        flags: VersionFlags,
    ) {
        let next = self.log.len();
        let hash = self.hasher.hash_one(key);
        let log = &mut self.log;
        let indexed = match self.index.find_mut(hash, |&i| log[i].key == key) {
            Some(&mut i) if self.granularity == Granularity::PerCommit => {
                let s = &mut log[i];
                s.value = value;
                s.lineage = lineage;
                s.flags = flags;
                return;
            }
            Some(i) => {
                *i = next;
                true
            }
            None => false,
        };
        log.push(Staged {
            key: key.to_vec(),
            value,
            lineage,
            flags,
        });
        if !indexed {
            let hasher = &self.hasher;
            self.index
                .insert_unique(hash, next, |&j| hasher.hash_one(&log[j].key));
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Staged> {
        let hash = self.hasher.hash_one(key);
        let log = &self.log;
        self.index
            .find(hash, |&i| log[i].key == key)
            .map(|&i| &log[i])
    }

    pub fn len(&self) -> usize {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    pub fn take(&mut self) -> Vec<Staged> {
        self.index.clear();
        // The next commit is likely to stage about as much (bounded, so a
        // one-off large rewind does not pin its size).
        let room = self.log.len().min(MAX_RESERVED);
        std::mem::replace(&mut self.log, Vec::with_capacity(room))
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.log.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &mut Staging, k: &str, v: Option<&str>) {
        s.stage(k.as_bytes(), v.map(Into::into), None, VersionFlags::NONE);
    }

    #[test]
    fn per_mutation_keeps_every_mutation_and_reads_the_last() {
        let mut s = Staging::new(Granularity::PerMutation);
        m(&mut s, "a", Some("1"));
        m(&mut s, "b", Some("x"));
        m(&mut s, "a", None);
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(b"a").unwrap().value, None);
        assert_eq!(s.take().len(), 3);
        assert!(s.get(b"a").is_none());
    }

    #[test]
    fn per_commit_collapses_a_key() {
        let mut s = Staging::new(Granularity::PerCommit);
        m(&mut s, "a", Some("1"));
        m(&mut s, "b", Some("x"));
        m(&mut s, "a", Some("2"));
        assert_eq!(s.len(), 2);
        let log = s.take();
        assert_eq!(log[0].value.as_deref(), Some(&b"2"[..]));
    }

    proptest::proptest! {
        /// Against a model (a list of every mutation): reads see each key's
        /// last mutation, per-mutation keeps them all in order, per-commit
        /// keeps each key's last at the place of its first.
        #[test]
        fn agrees_with_a_model(
            per_commit: bool,
            ops in proptest::collection::vec((0u16..300, proptest::option::of(0u8..9)), 0..600),
        ) {
            let g = if per_commit { Granularity::PerCommit } else { Granularity::PerMutation };
            let mut s = Staging::new(g);
            let mut model: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            for (k, v) in &ops {
                let key = format!("key-{k}").into_bytes();
                let val = v.map(|v| vec![v; 3]);
                s.stage(&key, val.clone(), None, VersionFlags::NONE);
                match model.iter_mut().find(|(mk, _)| *mk == key) {
                    Some(slot) if per_commit => slot.1 = val,
                    _ => model.push((key, val)),
                }
            }
            for (k, _) in &ops {
                let key = format!("key-{k}").into_bytes();
                let last = model.iter().rev().find(|(mk, _)| *mk == key).map(|(_, v)| v.clone());
                proptest::prop_assert_eq!(s.get(&key).map(|m| m.value.clone()), last);
            }
            let log: Vec<_> = s.take().into_iter().map(|m| (m.key, m.value)).collect();
            proptest::prop_assert_eq!(log, model);
            proptest::prop_assert!(s.is_empty() && s.get(b"key-0").is_none());
        }
    }
}
