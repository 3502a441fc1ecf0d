//! Which partition a key belongs to: the partitioner an input topic's
//! producers used, declared per topic ([`crate::AppConfig::partitioners`]),
//! and the check that the data agrees with it.
//!
//! Kafka's Java clients use murmur2 (as librdkafka's `murmur2_random` does);
//! librdkafka and every client built on it (Python's confluent-kafka, Go,
//! .NET, node-rdkafka, Rust's rdkafka) default to `consistent_random`, a
//! CRC32; Sarama and librdkafka's `fnv1a` use FNV-1a. Processing never
//! depends on the partitioner (a task processes whatever its partition
//! holds); routing a key to its partition's owner does.
//!
//! Invariants:
//! - [`Partitioner::partition`] computes exactly what the named producer
//!   computes for a non-empty key (the librdkafka functions in
//!   `rdkafka_msg.c`, pinned by reference values in the tests below).
//! - [`Partitioner::Unknown`] routes nothing: its tables are read by asking
//!   every partition.
//! - [`RouteCheck`] only ever narrows what it believes: once a topic shows a
//!   record in a partition its partitioner does not name, routing of that
//!   topic's tables stops trusting the hash on this instance until restart.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use strata_state::Partition;

/// How an input topic's producers chose each record's partition from its
/// key.
#[derive(Clone, Default)]
pub enum Partitioner {
    /// Kafka's default: `murmur2(key) & 0x7fffffff % n` (Java clients,
    /// Kafka Streams, librdkafka's `murmur2` and `murmur2_random`). The
    /// engine's own producers (repartition and output topics) use it.
    #[default]
    Murmur2,
    /// librdkafka's default, `consistent_random` (and `consistent`):
    /// `crc32(key) % n`. The default of confluent-kafka (Python), the Go,
    /// .NET and node-rdkafka clients and Rust's rdkafka.
    Crc32,
    /// FNV-1a as librdkafka's `fnv1a`/`fnv1a_random` and Sarama's hash
    /// partitioner compute it (the hash's absolute value as an i32).
    Fnv1a,
    /// A partitioner of the user's, named for messages and metrics.
    Custom(CustomPartitioner),
    /// Not known (or not a function of the key, such as an explicit
    /// partition per record): keys are never routed by hash, reads ask
    /// every partition.
    Unknown,
}

/// A user's partitioner: `f(key, partitions)` must return the partition
/// (below `partitions`) the topic's producers chose for `key`.
#[derive(Clone)]
pub struct CustomPartitioner {
    name: Arc<str>,
    f: PartitionFn,
}

/// A user's partitioner function: `(key, partitions) -> partition`.
type PartitionFn = Arc<dyn Fn(&[u8], u32) -> u32 + Send + Sync>;

impl CustomPartitioner {
    /// A partitioner named `name` computing `f(key, partitions)`.
    pub fn new(
        name: impl Into<String>,
        f: impl Fn(&[u8], u32) -> u32 + Send + Sync + 'static,
    ) -> CustomPartitioner {
        CustomPartitioner {
            name: Arc::from(name.into()),
            f: Arc::new(f),
        }
    }
}

impl fmt::Debug for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The partitioners a mismatch is explained with, in the order messages
/// name them.
static KNOWN: [Partitioner; 3] = [Partitioner::Murmur2, Partitioner::Crc32, Partitioner::Fnv1a];

impl Partitioner {
    /// The partition of `key` among `partitions`, or `None` when this
    /// partitioner cannot say ([`Partitioner::Unknown`], or a custom one
    /// answering out of range).
    pub fn partition(&self, key: &[u8], partitions: u32) -> Option<Partition> {
        let n = partitions.max(1);
        let p = match self {
            Partitioner::Murmur2 => (murmur2(key) & 0x7fff_ffff) % n,
            Partitioner::Crc32 => crc32fast::hash(key) % n,
            Partitioner::Fnv1a => fnv1a(key) % n,
            Partitioner::Custom(c) => {
                let p = (c.f)(key, n);
                if p >= n {
                    return None;
                }
                p
            }
            Partitioner::Unknown => return None,
        };
        Some(Partition(p))
    }

    /// The name messages, metrics and docs use (`murmur2`, `crc32`,
    /// `fnv1a`, a custom partitioner's own, `unknown`).
    pub fn name(&self) -> &str {
        match self {
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Crc32 => "crc32",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::Custom(c) => &c.name,
            Partitioner::Unknown => "unknown",
        }
    }

    /// What to write in the config to declare this partitioner, for
    /// messages.
    fn declaration(&self) -> &'static str {
        match self {
            Partitioner::Murmur2 => {
                "Partitioner::Murmur2 (Java clients, librdkafka murmur2_random)"
            }
            Partitioner::Crc32 => {
                "Partitioner::Crc32 (librdkafka's default consistent_random: confluent-kafka, Go, .NET, rdkafka)"
            }
            Partitioner::Fnv1a => "Partitioner::Fnv1a (librdkafka fnv1a, Sarama)",
            Partitioner::Custom(_) | Partitioner::Unknown => "Partitioner::Unknown",
        }
    }
}

/// Kafka's murmur2 hash of `data`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// FNV-1a as librdkafka's `rd_fnv1a` computes it: 32-bit FNV-1a taken as
/// an i32, made non-negative as Sarama does (`i32::MIN` stays
/// `0x8000_0000`).
pub fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as i32).unsigned_abs()
}

/// The partition of `key` among `partitions` under Kafka's default
/// (murmur2) partitioner, as the engine's own producers place records.
pub fn partition_for(key: &[u8], partitions: u32) -> Partition {
    Partition((murmur2(key) & 0x7fff_ffff) % partitions.max(1))
}

/// What this instance has seen of one input topic's partitioning: records
/// checked against the declared partitioner, those it placed elsewhere,
/// and which known partitioners fit every record checked.
///
/// Shared by the tasks (which record) and the query service and typed
/// reads (which ask [`RouteCheck::trusted`]); atomics, so the hot path
/// takes no lock.
#[derive(Debug)]
pub struct RouteCheck {
    topic: String,
    declared: Partitioner,
    /// The declared partitioner's bit in `fitting`, when it is a known one.
    declared_bit: Option<u8>,
    partitions: u32,
    /// The counters, striped by thread: every worker counts every record,
    /// and one shared counter's cache line moving between cores cost more
    /// than the check itself (benches/partitioner.rs).
    stripes: Box<[Stripe]>,
    /// Set once, by the first contradicting record; read by every record
    /// after (a line nobody writes again stays in every core's cache).
    contradicted: AtomicBool,
    /// Bit i: `KNOWN[i]` fits every record checked so far.
    fitting: AtomicU8,
    warned: AtomicBool,
}

/// Counter stripes per check (threads beyond it share stripes).
const STRIPES: usize = 8;

/// One thread's share of a check's counters, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    checked: AtomicU64,
    mismatched: AtomicU64,
}

/// This thread's stripe, assigned round-robin on first use.
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// Records checked after the first mismatch before the warning names the
/// partitioners that fit, unless they are narrowed to one sooner.
const WARN_AFTER: u64 = 32;

impl RouteCheck {
    /// A check of `topic` (physical name, with `partitions` partitions)
    /// declared to use `declared`.
    pub fn new(topic: impl Into<String>, declared: Partitioner, partitions: u32) -> RouteCheck {
        let declared_bit = KNOWN
            .iter()
            .position(|k| std::mem::discriminant(k) == std::mem::discriminant(&declared))
            .map(|i| 1u8 << i);
        RouteCheck {
            topic: topic.into(),
            declared,
            declared_bit,
            partitions,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            contradicted: AtomicBool::new(false),
            fitting: AtomicU8::new((1 << KNOWN.len()) - 1),
            warned: AtomicBool::new(false),
        }
    }

    /// The topic checked.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitioner declared for the topic.
    pub fn declared(&self) -> &Partitioner {
        &self.declared
    }

    /// Records a record of the topic with `key` found in partition
    /// `actual`. Records without a key say nothing (producers place
    /// them at random) and are not checked. Warns once per topic, with
    /// what to declare, when the data contradicts the declaration.
    pub fn record(&self, key: Option<&[u8]>, actual: Partition) {
        let partitions = self.partitions;
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return;
        };
        let stripe = &self.stripes[thread_stripe()];
        let checked = stripe.checked.fetch_add(1, Ordering::Relaxed) + 1;
        // Hash only with the partitioners still in the running: once the
        // data has narrowed them to one, that is one hash per record, and
        // the shared mask is only read, never written.
        let before = self.fitting.load(Ordering::Relaxed);
        let mut fits = 0u8;
        for (i, p) in KNOWN.iter().enumerate() {
            if before & (1 << i) != 0 && p.partition(key, partitions) == Some(actual) {
                fits |= 1 << i;
            }
        }
        let mask = if fits == before {
            before
        } else {
            self.fitting.fetch_and(fits, Ordering::Relaxed) & fits
        };
        let agrees = match self.declared_bit {
            // The declared partitioner is a known one: its bit says.
            Some(bit) if before & bit != 0 => fits & bit != 0,
            _ => self.declared.partition(key, partitions) == Some(actual),
        };
        // Unknown declares nothing to contradict; the tables route by
        // asking every partition anyway.
        if matches!(self.declared, Partitioner::Unknown) || agrees {
            if self.contradicted.load(Ordering::Relaxed) {
                self.maybe_warn(checked, mask);
            }
            return;
        }
        stripe.mismatched.fetch_add(1, Ordering::Relaxed);
        if !self.contradicted.load(Ordering::Relaxed) {
            self.contradicted.store(true, Ordering::Relaxed);
        }
        self.maybe_warn(checked, mask);
    }

    /// Warns once, when the records have said enough: `checked` is this
    /// thread's count, a lower bound of the topic's.
    fn maybe_warn(&self, checked: u64, mask: u8) {
        if self.warned.load(Ordering::Relaxed) {
            return;
        }
        if mask.count_ones() > 1 && checked < WARN_AFTER {
            return;
        }
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        let checked = self.checked();
        let fit: Vec<&str> = KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p.declaration())
            .collect();
        let advice = if fit.is_empty() {
            "none of murmur2, crc32 and fnv1a fits every record: declare Partitioner::Unknown \
             (reads then ask every partition) or a Partitioner::Custom"
                .to_string()
        } else {
            format!("declare {}", fit.join(" or "))
        };
        tracing::warn!(
            topic = %self.topic,
            declared = self.declared.name(),
            mismatched = self.mismatched(),
            checked,
            "records of this input topic are not where the declared partitioner puts their keys; \
             reads of its tables now ask every partition instead of routing by key (slower, \
             never wrong); set AppConfig::partitioners[{:?}]: {advice}",
            self.topic
        );
    }

    /// Whether the hash can be trusted to name a key's partition: the
    /// declared partitioner is a function of the key and no record seen
    /// here contradicted it.
    pub fn trusted(&self) -> bool {
        !matches!(self.declared, Partitioner::Unknown) && !self.contradicted.load(Ordering::Relaxed)
    }

    /// Keyed records checked.
    pub fn checked(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.checked.load(Ordering::Relaxed))
            .sum()
    }

    /// Keyed records found in a partition other than the declared
    /// partitioner's.
    pub fn mismatched(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.mismatched.load(Ordering::Relaxed))
            .sum()
    }

    /// The known partitioners that fit every keyed record checked so far.
    pub fn fitting(&self) -> Vec<&'static str> {
        let mask = self.fitting.load(Ordering::Relaxed);
        KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, p)| p.name())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input) as i32,
                want,
                "{:?}",
                std::str::from_utf8(input)
            );
        }
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
    }

    #[test]
    fn crc32_and_fnv1a_match_reference_values() {
        // CRC-32 (IEEE, as zlib and librdkafka's rd_crc32): the check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        // FNV-1a 32-bit reference values; the second is negative as an
        // i32 and is taken as its absolute value, as librdkafka does.
        assert_eq!(fnv1a(b""), (0x811c_9dc5_u32 as i32).unsigned_abs());
        let raw = |d: &[u8]| {
            let mut h: u32 = 0x811c_9dc5;
            for b in d {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h
        };
        assert_eq!(raw(b"a"), 0xe40c_292c);
        assert_eq!(raw(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a(b"a"), (0xe40c_292c_u32 as i32).unsigned_abs());
        assert_eq!(fnv1a(b"foobar"), (0xbf9c_f968_u32 as i32).unsigned_abs());
    }

    #[test]
    fn partitioners_differ_and_unknown_routes_nothing() {
        let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        let differ = keys
            .iter()
            .filter(|k| {
                Partitioner::Murmur2.partition(k.as_bytes(), 4)
                    != Partitioner::Crc32.partition(k.as_bytes(), 4)
            })
            .count();
        // Independent hashes agree on about a quarter of the keys.
        assert!(differ > 100, "{differ}");
        assert_eq!(Partitioner::Unknown.partition(b"k", 4), None);
        let custom = Partitioner::Custom(CustomPartitioner::new("last-byte", |k, n| {
            u32::from(*k.last().unwrap_or(&0)) % n
        }));
        assert_eq!(custom.partition(b"a", 4), Some(Partition(97 % 4)));
        let broken = Partitioner::Custom(CustomPartitioner::new("broken", |_, n| n));
        assert_eq!(broken.partition(b"a", 4), None);
        assert_eq!(
            Partitioner::Murmur2.partition(b"x", 7),
            Some(partition_for(b"x", 7))
        );
    }

    #[test]
    fn route_check_finds_the_fitting_partitioner() {
        let c = RouteCheck::new("in", Partitioner::Murmur2, 4);
        for i in 0..100 {
            let k = format!("user-{i}");
            let p = Partitioner::Crc32.partition(k.as_bytes(), 4).unwrap();
            c.record(Some(k.as_bytes()), p);
        }
        assert!(c.mismatched() > 50, "{}", c.mismatched());
        assert_eq!(c.checked(), 100);
        assert!(!c.trusted());
        assert_eq!(c.fitting(), vec!["crc32"]);

        let ok = RouteCheck::new("in", Partitioner::Crc32, 4);
        for i in 0..100 {
            let k = format!("user-{i}");
            let p = Partitioner::Crc32.partition(k.as_bytes(), 4).unwrap();
            ok.record(Some(k.as_bytes()), p);
        }
        // Records without a key are not checked.
        ok.record(None, Partition(3));
        ok.record(Some(b""), Partition(3));
        assert_eq!((ok.checked(), ok.mismatched()), (100, 0));
        assert!(ok.trusted());

        let unknown = RouteCheck::new("in", Partitioner::Unknown, 4);
        unknown.record(Some(b"k"), Partition(0));
        assert_eq!(unknown.mismatched(), 0);
        assert!(!unknown.trusted());
    }

    proptest::proptest! {
        /// Against a model: the mismatches are exactly the keys the
        /// declared partitioner places elsewhere, and the producer's
        /// partitioner always stays among those that fit.
        #[test]
        fn route_check_counts_what_a_model_counts(
            keys in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..12), 1..60),
            producer in 0usize..3,
            declared in 0usize..3,
            partitions in 1u32..9,
        ) {
            let (producer, declared) = (&KNOWN[producer], &KNOWN[declared]);
            let c = RouteCheck::new("t", declared.clone(), partitions);
            let mut want = 0;
            for k in &keys {
                let actual = producer.partition(k, partitions).unwrap();
                want += u64::from(declared.partition(k, partitions) != Some(actual));
                c.record(Some(k), actual);
            }
            proptest::prop_assert_eq!(c.mismatched(), want);
            proptest::prop_assert_eq!(c.checked(), keys.len() as u64);
            proptest::prop_assert!(c.fitting().contains(&producer.name()));
            proptest::prop_assert_eq!(c.trusted(), want == 0);
        }
    }
}
