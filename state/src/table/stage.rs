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

use std::collections::HashMap;

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
    /// Position in `log` of each key's latest mutation.
    index: HashMap<Vec<u8>, usize, foldhash::fast::RandomState>,
}

impl Staging {
    pub fn new(granularity: Granularity) -> Staging {
        Staging {
            granularity,
            log: Vec::new(),
            index: HashMap::default(),
        }
    }

    pub fn stage(&mut self, m: Staged) {
        let next = self.log.len();
        match self.index.get_mut(&m.key) {
            Some(i) if self.granularity == Granularity::PerCommit => {
                self.log[*i] = m;
                return;
            }
            Some(i) => *i = next,
            None => {
                self.index.insert(m.key.clone(), next);
            }
        }
        self.log.push(m);
    }

    pub fn get(&self, key: &[u8]) -> Option<&Staged> {
        self.index.get(key).map(|&i| &self.log[i])
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

    fn m(k: &str, v: Option<&str>) -> Staged {
        Staged {
            key: k.into(),
            value: v.map(Into::into),
            lineage: None,
            flags: VersionFlags::NONE,
        }
    }

    #[test]
    fn per_mutation_keeps_every_mutation_and_reads_the_last() {
        let mut s = Staging::new(Granularity::PerMutation);
        s.stage(m("a", Some("1")));
        s.stage(m("b", Some("x")));
        s.stage(m("a", None));
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(b"a").unwrap().value, None);
        assert_eq!(s.take().len(), 3);
        assert!(s.get(b"a").is_none());
    }

    #[test]
    fn per_commit_collapses_a_key() {
        let mut s = Staging::new(Granularity::PerCommit);
        s.stage(m("a", Some("1")));
        s.stage(m("b", Some("x")));
        s.stage(m("a", Some("2")));
        assert_eq!(s.len(), 2);
        let log = s.take();
        assert_eq!(log[0].value.as_deref(), Some(&b"2"[..]));
    }
}
