//! Exactly-once bookkeeping that does not trust the broker to hide aborted
//! transactions.
//!
//! Under [`Guarantee::ExactlyOnce`](crate::Guarantee) every task writes its
//! changelog records, outputs and input offsets in Kafka transactions of its
//! own producer (transactional id `<application id>-task-<partition>`).
//! Apache Kafka hides an aborted transaction's records from `read_committed`
//! consumers; Tansu 0.6 does not (`engine/tests/tansu_txn.rs`). So every
//! record a task writes carries a [`TXN_HEADER`] naming its transaction,
//! and a restore keeps only the records of committed transactions itself
//! ([`TxnFilter`]), which makes it correct on both.
//!
//! Transactions are named `(epoch, seq)` ([`TxnId`]):
//! - an *epoch* is one life of a task's producer: a task takes a new epoch
//!   each time it opens (assignment, restart after a failed commit), one
//!   more than any epoch it found in its changelogs or in the marker;
//! - `seq` counts the epoch's transactions from 1. A transaction begins
//!   only after the previous one committed; a transaction that fails ends
//!   the epoch (the task is reopened with a new producer and epoch). So
//!   within an epoch, every transaction but the last committed.
//! - the epoch's first transaction writes a *fence* record to every table's
//!   changelog before anything else, naming the *base*: the last committed
//!   transaction when the epoch began. So a reader learns, at a fence,
//!   which transactions of the epochs before it committed.
//! - every commit also commits a *marker* offset, `TxnId::marker_offset`,
//!   for the task's partition of `<application id>-transactions`, in the
//!   same transaction as the input offsets. The group's committed marker is
//!   therefore the last committed transaction (the *tip*): transactional
//!   offset commits are honoured by both brokers, unlike offset metadata
//!   (Tansu 0.6 drops it).

/// Header naming the transaction a record was written in.
pub const TXN_HEADER: &str = "strata-txn";

/// Largest epoch the marker offset can carry (2^24 - 1).
pub const MAX_EPOCH: u32 = (1 << 24) - 1;
const SEQ_BITS: u32 = 39;

/// A transaction of a task: the producer's life (`epoch`) and its number
/// within that life (`seq`, from 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId {
    /// The task producer's life, increasing.
    pub epoch: u32,
    /// The transaction within the epoch, from 1.
    pub seq: u64,
}

impl TxnId {
    /// The committed offset that records this transaction as the last
    /// committed one: `epoch << 39 | seq`.
    pub fn marker_offset(self) -> i64 {
        (i64::from(self.epoch) << SEQ_BITS) | (self.seq as i64 & ((1 << SEQ_BITS) - 1))
    }

    /// The transaction a committed marker offset names; `None` for a
    /// negative offset (nothing committed).
    pub fn from_marker_offset(offset: i64) -> Option<TxnId> {
        if offset <= 0 {
            return None;
        }
        Some(TxnId {
            epoch: (offset >> SEQ_BITS) as u32,
            seq: (offset & ((1 << SEQ_BITS) - 1)) as u64,
        })
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// What a record's [`TXN_HEADER`] says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TxnTag {
    /// A record written in transaction `0`.
    Data(TxnId),
    /// The first record of an epoch in a changelog: the epoch's first
    /// transaction is `id`, and `base` was the last committed transaction
    /// when the epoch began (`None`: none yet).
    Fence {
        /// The epoch's first transaction.
        id: TxnId,
        /// The tip when the epoch began.
        base: Option<TxnId>,
    },
}

impl TxnTag {
    /// The header value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(26);
        let (kind, id) = match self {
            TxnTag::Data(id) => (0u8, id),
            TxnTag::Fence { id, .. } => (1u8, id),
        };
        v.push(kind);
        v.extend_from_slice(&id.epoch.to_be_bytes());
        v.extend_from_slice(&id.seq.to_be_bytes());
        if let TxnTag::Fence { base, .. } = self {
            match base {
                None => v.push(0),
                Some(b) => {
                    v.push(1);
                    v.extend_from_slice(&b.epoch.to_be_bytes());
                    v.extend_from_slice(&b.seq.to_be_bytes());
                }
            }
        }
        v
    }

    /// Parses a header value.
    ///
    /// # Errors
    /// A message naming what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<TxnTag, String> {
        let id_at = |at: usize| -> Result<TxnId, String> {
            let short = || format!("{TXN_HEADER} header too short ({} bytes)", b.len());
            let e: [u8; 4] = b
                .get(at..at + 4)
                .and_then(|e| e.try_into().ok())
                .ok_or_else(short)?;
            let s: [u8; 8] = b
                .get(at + 4..at + 12)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(short)?;
            Ok(TxnId {
                epoch: u32::from_be_bytes(e),
                seq: u64::from_be_bytes(s),
            })
        };
        match b.first() {
            Some(0) => Ok(TxnTag::Data(id_at(1)?)),
            Some(1) => {
                let id = id_at(1)?;
                let base = match b.get(13) {
                    Some(0) => None,
                    Some(1) => Some(id_at(14)?),
                    other => return Err(format!("{TXN_HEADER} fence with base flag {other:?}")),
                };
                Ok(TxnTag::Fence { id, base })
            }
            other => Err(format!("{TXN_HEADER} header of unknown kind {other:?}")),
        }
    }

    /// The transaction the record belongs to.
    pub fn id(&self) -> TxnId {
        match self {
            TxnTag::Data(id) | TxnTag::Fence { id, .. } => *id,
        }
    }
}

/// One transaction's records, held until it is known to have committed.
#[derive(Debug)]
struct Held<T> {
    id: TxnId,
    items: Vec<T>,
}

/// Keeps the records of committed transactions, in log order, from a log
/// one task writes (a changelog partition), whatever the broker's
/// isolation delivers.
///
/// Rules, for records in log order:
/// - a record without a tag was written without transactions: kept;
/// - a fence of an epoch newer than the current one resolves everything
///   held: transactions of the base's epoch up to the base are kept, all
///   others dropped (they were aborted or fenced). A fence of an epoch not
///   newer is a fenced producer's and is ignored;
/// - a data record of the current epoch's transaction `s` keeps every held
///   transaction of that epoch before `s` (a transaction begins only after
///   the previous one committed) and is held itself;
/// - a data record of any other epoch is dropped: the epoch was superseded
///   (or never fenced in this log);
/// - at the end of the log, [`TxnFilter::finish`] resolves what is still
///   held against the tip (the committed marker).
#[derive(Debug)]
pub struct TxnFilter<T> {
    current: Option<u32>,
    held: Vec<Held<T>>,
    max_epoch: u32,
    dropped: u64,
}

impl<T> Default for TxnFilter<T> {
    fn default() -> Self {
        TxnFilter {
            current: None,
            held: Vec::new(),
            max_epoch: 0,
            dropped: 0,
        }
    }
}

impl<T> TxnFilter<T> {
    /// A filter for a log read from its start.
    pub fn new() -> TxnFilter<T> {
        TxnFilter::default()
    }

    /// Starts after a record known to be committed (a restore resumes
    /// after its checkpoint): its tag sets the current epoch.
    pub fn resume_after(&mut self, tag: Option<TxnTag>) {
        if let Some(t) = tag {
            self.current = Some(t.id().epoch);
            self.max_epoch = self.max_epoch.max(t.id().epoch);
        }
    }

    /// Feeds the next record of the log; kept records go to `out`, in log
    /// order.
    pub fn push(&mut self, item: Option<T>, tag: Option<TxnTag>, out: &mut Vec<T>) {
        let Some(tag) = tag else {
            if let Some(item) = item {
                out.push(item);
            }
            return;
        };
        let id = tag.id();
        self.max_epoch = self.max_epoch.max(id.epoch);
        match tag {
            TxnTag::Fence { base, .. } => {
                if self.current.is_some_and(|c| id.epoch <= c) {
                    // A fenced producer's late fence.
                    return;
                }
                self.resolve(base, out);
                self.current = Some(id.epoch);
                if let Some(item) = item {
                    self.hold(id, item);
                }
            }
            TxnTag::Data(_) => {
                let Some(item) = item else { return };
                if self.current != Some(id.epoch) {
                    self.dropped += 1;
                    return;
                }
                let n = self
                    .held
                    .iter()
                    .take_while(|h| h.id.epoch == id.epoch && h.id.seq < id.seq)
                    .count();
                for h in self.held.drain(..n) {
                    out.extend(h.items);
                }
                self.hold(id, item);
            }
        }
    }

    fn hold(&mut self, id: TxnId, item: T) {
        match self.held.last_mut() {
            Some(h) if h.id == id => h.items.push(item),
            _ => self.held.push(Held {
                id,
                items: vec![item],
            }),
        }
    }

    /// Keeps held transactions up to `tip` (those of its epoch), drops the
    /// rest.
    fn resolve(&mut self, tip: Option<TxnId>, out: &mut Vec<T>) {
        for h in self.held.drain(..) {
            if tip.is_some_and(|t| h.id.epoch == t.epoch && h.id.seq <= t.seq) {
                out.extend(h.items);
            } else {
                self.dropped += h.items.len() as u64;
            }
        }
    }

    /// At the end of the log: keeps what `tip` (the last committed
    /// transaction) shows committed and drops the rest.
    pub fn finish(&mut self, tip: Option<TxnId>, out: &mut Vec<T>) {
        self.resolve(tip, out);
    }

    /// The newest epoch seen.
    pub fn max_epoch(&self) -> u32 {
        self.max_epoch
    }

    /// Records dropped as aborted so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records held, awaiting their transaction's outcome.
    pub fn held(&self) -> usize {
        self.held.iter().map(|h| h.items.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u32, seq: u64) -> TxnId {
        TxnId { epoch, seq }
    }

    #[test]
    fn tags_and_marker_offsets_round_trip() {
        for t in [
            TxnTag::Data(id(3, 9)),
            TxnTag::Fence {
                id: id(4, 1),
                base: None,
            },
            TxnTag::Fence {
                id: id(MAX_EPOCH, 1),
                base: Some(id(7, 123_456_789)),
            },
        ] {
            assert_eq!(TxnTag::decode(&t.encode()), Ok(t));
        }
        assert!(TxnTag::decode(&[2]).is_err());
        assert!(TxnTag::decode(&[0, 1, 2]).is_err());
        for i in [id(1, 1), id(MAX_EPOCH, (1 << 39) - 1), id(77, 5)] {
            assert_eq!(TxnId::from_marker_offset(i.marker_offset()), Some(i));
            assert!(i.marker_offset() > 0);
        }
        assert_eq!(TxnId::from_marker_offset(-1001), None);
        // Later transactions have larger markers.
        assert!(id(2, 1).marker_offset() > id(1, 1 << 30).marker_offset());
    }

    /// A scripted log: (tag, item) in log order.
    fn run(log: &[(TxnTag, Option<u32>)], tip: Option<TxnId>) -> Vec<u32> {
        let mut f = TxnFilter::new();
        let mut out = Vec::new();
        for (t, item) in log {
            f.push(*item, Some(*t), &mut out);
        }
        f.finish(tip, &mut out);
        out
    }

    fn fence(epoch: u32, base: Option<TxnId>) -> (TxnTag, Option<u32>) {
        (
            TxnTag::Fence {
                id: id(epoch, 1),
                base,
            },
            None,
        )
    }

    fn data(epoch: u32, seq: u64, v: u32) -> (TxnTag, Option<u32>) {
        (TxnTag::Data(id(epoch, seq)), Some(v))
    }

    #[test]
    fn committed_transactions_are_kept_in_order() {
        let log = [
            fence(1, None),
            data(1, 1, 10),
            data(1, 1, 11),
            data(1, 2, 20),
            data(1, 3, 30),
        ];
        assert_eq!(run(&log, Some(id(1, 3))), [10, 11, 20, 30]);
        // The last transaction is held until the tip shows it committed.
        assert_eq!(run(&log, Some(id(1, 2))), [10, 11, 20]);
    }

    #[test]
    fn an_aborted_last_transaction_is_dropped_at_the_next_epochs_fence() {
        // Epoch 1 commits 1 and 2; 3 is aborted (the task failed); epoch 2
        // starts from base 1.2 and commits 1.
        let log = [
            fence(1, None),
            data(1, 1, 10),
            data(1, 2, 20),
            data(1, 3, 30),
            fence(2, Some(id(1, 2))),
            data(2, 1, 31),
        ];
        assert_eq!(run(&log, Some(id(2, 1))), [10, 20, 31]);
        // The same log, but epoch 2's first transaction aborted too.
        assert_eq!(run(&log, Some(id(1, 2))), [10, 20]);
    }

    #[test]
    fn a_zombies_records_after_the_new_owners_fence_are_dropped() {
        let log = [
            fence(1, None),
            data(1, 1, 10),
            data(1, 2, 20),
            // The new owner fences epoch 1 at its tip 1.1: 1.2 was open.
            fence(2, Some(id(1, 1))),
            data(2, 1, 21),
            // The frozen owner wakes up and writes on (a broker that
            // rejects fenced producers never lets this land).
            data(1, 3, 99),
            fence(1, Some(id(0, 0))),
            data(2, 2, 22),
        ];
        assert_eq!(run(&log, Some(id(2, 2))), [10, 21, 22]);
    }

    #[test]
    fn an_epoch_that_never_committed_leaves_nothing() {
        // Epoch 2 opened, wrote, and crashed before its first commit; epoch
        // 3 (base 1.1) commits.
        let log = [
            fence(1, None),
            data(1, 1, 10),
            fence(2, Some(id(1, 1))),
            data(2, 1, 66),
            fence(3, Some(id(1, 1))),
            data(3, 1, 11),
        ];
        assert_eq!(run(&log, Some(id(3, 1))), [10, 11]);
    }

    #[test]
    fn resuming_after_a_checkpoint_knows_the_current_epoch() {
        let mut f = TxnFilter::new();
        f.resume_after(Some(TxnTag::Data(id(5, 7))));
        let mut out = Vec::new();
        for (t, v) in [data(5, 8, 1), data(5, 9, 2), data(4, 9, 3)] {
            f.push(v, Some(t), &mut out);
        }
        f.finish(Some(id(5, 8)), &mut out);
        assert_eq!(out, [1]);
        assert_eq!(f.max_epoch(), 5);
        assert_eq!(f.dropped(), 2);
    }

    /// What an owner can do next, in the model below.
    #[derive(Clone, Debug)]
    enum Op {
        /// A transaction of `n` records that commits.
        Commit(u8),
        /// A transaction of `n` records that aborts (or whose outcome is
        /// unknown and which the next epoch's fencing aborts): the task
        /// reopens with a new epoch.
        Fail(u8),
        /// The owner is fenced mid-transaction (`n` records written) by a
        /// new owner, which may then let the old one write `late` more.
        Fenced(u8, u8),
        /// A transaction that writes nothing to this log but commits (it
        /// changed another table of the task).
        Elsewhere,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..4).prop_map(Op::Commit),
            1 => (0u8..4).prop_map(Op::Fail),
            1 => (0u8..4, 0u8..3).prop_map(|(n, l)| Op::Fenced(n, l)),
            1 => Just(Op::Elsewhere),
        ]
    }

    proptest::proptest! {
        /// Any history of commits, aborts, fencings and zombie writes: the
        /// filter keeps exactly the committed records, in order.
        #[test]
        fn the_filter_keeps_exactly_the_committed_records(ops in proptest::collection::vec(op(), 1..40)) {
            let mut log: Vec<(TxnTag, Option<u32>)> = Vec::new();
            let mut committed = Vec::new();
            let (mut epoch, mut seq, mut tip, mut next) = (1u32, 0u64, None::<TxnId>, 0u32);
            let mut fenced_here = false;
            for op in ops {
                let txn = id(epoch, seq + 1);
                // Every epoch's first transaction starts with its fence.
                let begin = |log: &mut Vec<(TxnTag, Option<u32>)>, fenced_here: &mut bool| {
                    if !*fenced_here {
                        log.push((TxnTag::Fence { id: txn, base: tip }, None));
                        *fenced_here = true;
                    }
                };
                let mut write = |log: &mut Vec<(TxnTag, Option<u32>)>, n: u8| {
                    let mut vs = Vec::new();
                    for _ in 0..n {
                        log.push((TxnTag::Data(txn), Some(next)));
                        vs.push(next);
                        next += 1;
                    }
                    vs
                };
                match op {
                    Op::Commit(n) => {
                        begin(&mut log, &mut fenced_here);
                        committed.extend(write(&mut log, n));
                        seq += 1;
                        tip = Some(txn);
                    }
                    Op::Elsewhere => {
                        // Its fence (first transaction) still reaches every
                        // changelog of the task.
                        begin(&mut log, &mut fenced_here);
                        seq += 1;
                        tip = Some(txn);
                    }
                    Op::Fail(n) => {
                        begin(&mut log, &mut fenced_here);
                        write(&mut log, n);
                        (epoch, seq, fenced_here) = (epoch + 1, 0, false);
                    }
                    Op::Fenced(n, late) => {
                        begin(&mut log, &mut fenced_here);
                        write(&mut log, n);
                        // The new owner's fence, then the zombie's writes.
                        let new = id(epoch + 1, 1);
                        log.push((TxnTag::Fence { id: new, base: tip }, None));
                        write(&mut log, late);
                        (epoch, seq, fenced_here) = (epoch + 1, 0, true);
                    }
                }
            }
            proptest::prop_assert_eq!(run(&log, tip), committed);
        }
    }

    #[test]
    fn untagged_records_pass() {
        let mut f = TxnFilter::new();
        let mut out = Vec::new();
        f.push(Some(1), None, &mut out);
        f.push(Some(2), None, &mut out);
        assert_eq!(out, [1, 2]);
    }
}
