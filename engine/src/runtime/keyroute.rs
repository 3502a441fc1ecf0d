//! Which partitions a read of one key of a table must ask: the one the
//! key's hash names, that one and then the others, or all of them.
//!
//! The hash is trusted only while the table's input topic has a declared
//! partitioner that is a function of the key and no record has contradicted
//! it, neither here ([`crate::partitioner::RouteCheck`]) nor on any other
//! live instance (announced through the owner directory). Invariants:
//! - a point read (Get, History) answers "absent" only after asking every
//!   partition the key could be in: the hashed one when the hash is trusted
//!   and misses are not confirmed (`query.confirm_misses`), otherwise every
//!   partition;
//! - the in-process readers, the query service and the rewind and
//!   subscribe targets all take their partitions from here.

use strata_state::Partition;

use super::{AppHandle, TableMeta};
use crate::partitioner::Partitioner;

/// Where a key of a table is looked for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KeyRoute {
    /// In this partition only: the hash is trusted, and its answer (found
    /// or absent) is final.
    Hash(Partition),
    /// In this partition first; if it is not there, in every other one
    /// before answering absent.
    Confirm(Partition),
    /// In every partition: the key's partition cannot be computed.
    Scatter,
}

impl KeyRoute {
    /// The partitions a request about one key that is not a point read
    /// (a single-key Scan, Subscribe or Rewind) concerns: the trusted
    /// hash's partition, or all. Confirming a miss is for point reads,
    /// whose answer can be "absent"; these follow the trusted hash.
    pub fn targets(self, partitions: u32) -> Vec<Partition> {
        match self {
            KeyRoute::Hash(p) | KeyRoute::Confirm(p) => vec![p],
            KeyRoute::Scatter => (0..partitions).map(Partition).collect(),
        }
    }
}

impl AppHandle {
    /// The partitioner that names the partitions of `meta`'s keys, if it
    /// can be trusted: declared as a function of the key, and no record
    /// contradicted it here or on another live instance.
    pub fn trusted_partitioner<'a>(&self, meta: &'a TableMeta) -> Option<&'a Partitioner> {
        (meta.route.trusted() && !self.directory.misrouted(&meta.input_topic))
            .then(|| meta.route.declared())
    }

    /// Where to look for the key with table bytes `key` of `meta`.
    ///
    /// `Err` carries why the key could not be turned into its record key (a
    /// key that is not one of the table's).
    pub fn route_key(&self, meta: &TableMeta, key: &[u8]) -> Result<KeyRoute, String> {
        let Some(declared) = self.trusted_partitioner(meta) else {
            return Ok(KeyRoute::Scatter);
        };
        let n = self.partitions;
        let Some(f) = &meta.codecs.partition_key else {
            // Re-keyed without a repartition: the record key cannot be
            // computed; the table bytes are a guess (right when both
            // encodings agree, such as `String` keys with `Utf8`), never
            // trusted for an absence.
            return Ok(declared
                .partition(key, n)
                .map_or(KeyRoute::Scatter, KeyRoute::Confirm));
        };
        let record_key = f(key)?;
        Ok(match declared.partition(&record_key, n) {
            None => KeyRoute::Scatter,
            Some(p) if self.config.query.confirm_misses => KeyRoute::Confirm(p),
            Some(p) => KeyRoute::Hash(p),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_each_route() {
        assert_eq!(KeyRoute::Hash(Partition(2)).targets(4), vec![Partition(2)]);
        assert_eq!(
            KeyRoute::Confirm(Partition(2)).targets(3),
            vec![Partition(2)]
        );
        assert_eq!(
            KeyRoute::Scatter.targets(2),
            vec![Partition(0), Partition(1)]
        );
    }
}
