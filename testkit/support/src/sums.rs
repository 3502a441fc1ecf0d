//! The sequenced per-key sums workload (`tansu_app`, `faults`): record `i`
//! goes to key `k<i % KEYS>` with sequence number `i / KEYS` and amount
//! `i % 97`; table [`TABLE`] keeps, per key, how many records were applied,
//! the sum of the distinct ones, and which sequence numbers were seen, so
//! lost and re-applied records are both visible. An oracle gives the
//! expected counts and sums, and a table can be rebuilt from its changelog.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_engine::kafka::changelog::KafkaChangelogReader;
use strata_engine::kafka::client::KafkaConfig;
use strata_engine::kafka::txn::TxnId;
use strata_engine::partitioner::partition_for;
use strata_engine::serde::{Utf8, json};
use strata_engine::{OutRecord, Table, TableOptions, Topology};
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_state::store::MemoryStore;
use strata_state::{HistoryQuery, Location, Partition, TableConfig, TableName, TablePartition};

/// The number of keys.
pub const KEYS: u64 = 1_000;
/// The aggregate table.
pub const TABLE: &str = "sums";
/// The input topic.
pub const TOPIC: &str = "events";

/// An input record: sequence number within its key, amount.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The record's sequence number within its key.
    pub seq: u32,
    /// The amount summed.
    pub amount: i64,
}

/// Applications, sum of distinct records, and which sequence numbers were
/// seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Records applied, re-applied ones included.
    pub applied: u64,
    /// The sum of the distinct records' amounts.
    pub sum: i64,
    /// A bit per sequence number seen.
    pub seen: Vec<u64>,
}

impl Agg {
    /// The distinct records applied.
    pub fn distinct(&self) -> u64 {
        self.seen.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// Adds `TABLE`, the aggregate of `events`, to `t`.
pub fn aggregate(t: &Topology) -> Table<String, Agg> {
    t.stream(TOPIC, Utf8, json::<Event>()).aggregate(
        TABLE,
        TableOptions::default(),
        |_k, e: Event, old: Option<Agg>| {
            let mut a = old.unwrap_or_default();
            let (w, b) = ((e.seq / 64) as usize, e.seq % 64);
            if a.seen.len() <= w {
                a.seen.resize(w + 1, 0);
            }
            if a.seen[w] & (1 << b) == 0 {
                a.sum += e.amount;
            }
            a.seen[w] |= 1 << b;
            a.applied += 1;
            Some(a)
        },
    )
}

/// Whether record `i` is undecodable (one in `every`).
pub fn poisoned(i: u64, every: Option<u64>) -> bool {
    every.is_some_and(|m| i % m == m - 1)
}

/// Key -> (records, sum) of the first `n` records, the poisoned ones left
/// out.
pub fn oracle(n: u64, poison_every: Option<u64>) -> BTreeMap<String, (u64, i64)> {
    let mut o: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for i in 0..n {
        if poisoned(i, poison_every) {
            continue;
        }
        let e = o.entry(format!("k{}", i % KEYS)).or_default();
        e.0 += 1;
        e.1 += (i % 97) as i64;
    }
    o
}

/// Checks the table against the oracle: every key present, no record lost;
/// returns how many records were applied more than once.
pub fn check(table: &BTreeMap<String, Agg>, want: &BTreeMap<String, (u64, i64)>) -> u64 {
    assert_eq!(table.len(), want.len(), "every key present");
    let mut reapplied = 0;
    for (k, (count, sum)) in want {
        let a = &table[k];
        assert_eq!(a.distinct(), *count, "{k}: records lost");
        assert_eq!(a.sum, *sum, "{k}: sum of distinct records");
        reapplied += a.applied - a.distinct();
    }
    reapplied
}

/// The workload over `partitions` partitions of [`TOPIC`].
#[derive(Clone, Copy, Debug)]
pub struct Sums {
    /// The partitions of the input topic (and of the table).
    pub partitions: u32,
}

impl Sums {
    /// Produces records `from..from + n`, counting records per partition
    /// into `counts`; a record for which `poison` gives bytes has those as
    /// its (undecodable) value.
    pub fn produce(
        &self,
        bootstrap: &str,
        from: u64,
        n: u64,
        counts: &mut BTreeMap<u32, u64>,
        poison: impl Fn(u64) -> Option<Vec<u8>>,
    ) {
        let records = (from..from + n).map(|i| {
            let key = format!("k{}", i % KEYS);
            *counts
                .entry(partition_for(key.as_bytes(), self.partitions).0)
                .or_default() += 1;
            let value = poison(i).unwrap_or_else(|| {
                serde_json::to_vec(&Event {
                    seq: (i / KEYS) as u32,
                    amount: (i % 97) as i64,
                })
                .unwrap()
            });
            OutRecord {
                topic: TOPIC.into(),
                key: Some(key.into_bytes()),
                value: Some(value),
                headers: vec![],
            }
        });
        crate::produce::produce(bootstrap, records);
    }

    /// Waits until group `app` has committed, on every partition of
    /// [`TOPIC`], the records `counts` says were produced there.
    ///
    /// # Panics
    ///
    /// If that has not happened within `timeout`.
    pub fn wait_committed(
        &self,
        bootstrap: &str,
        app: &str,
        counts: &BTreeMap<u32, u64>,
        timeout: Duration,
    ) {
        crate::committed::wait_committed(bootstrap, app, TOPIC, self.partitions, counts, timeout)
    }

    /// Rebuilds every partition of app `app`'s table from its changelog (a gap
    /// in versions fails the rebuild), checks every history is strictly
    /// increasing, and returns key -> aggregate. `tip` gives a partition's last
    /// committed transaction under exactly-once (its aborted records are
    /// skipped), `None` otherwise.
    pub fn table_from_changelog(
        &self,
        bootstrap: &str,
        app: &str,
        tip: impl Fn(u32) -> Option<TxnId>,
    ) -> BTreeMap<String, Agg> {
        let mut out = BTreeMap::new();
        for p in 0..self.partitions {
            let name = TableName::new(TABLE).unwrap();
            let loc = Location {
                table: name.clone(),
                partition: Partition(p),
            };
            let mut reader = KafkaChangelogReader::new(
                &KafkaConfig::new(bootstrap),
                format!("{app}-{TABLE}-changelog"),
                loc,
            )
            .unwrap()
            .with_tip(tip(p));
            let mut t =
                TablePartition::open(MemoryStore::new(), TableConfig::new(name, Partition(p)))
                    .unwrap();
            t.restore_from(&mut reader, 50_000, &mut |_| {})
                .expect("the changelog rebuilds without gaps");
            let r = t.reader();
            for k in 0..KEYS {
                let key = format!("k{k}");
                if partition_for(key.as_bytes(), self.partitions).0 != p {
                    continue;
                }
                let kb = key.clone().to_key_bytes();
                if let Some(v) = r.get(&kb).unwrap() {
                    let h = r
                        .history(
                            &kb,
                            &HistoryQuery {
                                limit: 10_000_000,
                                ..Default::default()
                            },
                        )
                        .unwrap();
                    assert!(
                        h.entries.windows(2).all(|w| w[0].version > w[1].version),
                        "{key}: history strictly increasing"
                    );
                    out.insert(key, ValueCodec::<Agg>::decode(&Bincode, &v.value).unwrap());
                }
            }
        }
        out
    }
}
