//! The Kafka changelog against a real Kafka-protocol broker (Tansu on
//! loopback): appends through `KafkaChangelogWriter`, restores through
//! `KafkaChangelogReader` into fresh table partitions, topic
//! administration, and the failure paths (absent topic, unreachable
//! broker).

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use strata_kafka::Error;
use strata_kafka::admin::{KafkaAdmin, TopicSpec, TopicStatus};
use strata_kafka::changelog::{KafkaChangelogReader, KafkaChangelogWriter, is_outcome_unknown};
use strata_kafka::client::KafkaConfig;
use strata_kafka::producer::AckedProducer;
use strata_state::changelog::ChangelogBatch;
use strata_state::store::MemoryStore;
use strata_state::{
    ChangelogPosition, ChangelogReader, HistoryQuery, Lineage, Location, Offset, Partition,
    RestoreProgress, TableConfig, TableName, TablePartition, Timestamp, Version,
};
use strata_testkit::Tansu;

const TABLE: &str = "orders";
const TOPIC: &str = "strata-orders-changelog";
const PARTITIONS: u32 = 4;
/// The partition the tests write: not 0, so a writer or reader that
/// ignores the partition would be caught.
const PARTITION: u32 = 2;
const RECORDS: u64 = 5_000;
const PER_APPEND: u64 = 1_000;
/// Distinct keys: each gets several versions, some of them deletions.
const KEYS: u64 = 700;

/// Client settings for a test broker: short timeouts, so a failure shows
/// quickly.
fn config(broker: &Tansu) -> KafkaConfig {
    let mut c = KafkaConfig::new(broker.bootstrap());
    c.client_id_prefix = "strata-test".into();
    c.session_timeout = Duration::from_secs(6);
    c.request_timeout = Duration::from_secs(10);
    c.read_timeout = Duration::from_secs(10);
    c.delivery_timeout = Duration::from_secs(20);
    c
}

fn location(partition: u32) -> Result<Location> {
    Ok(Location {
        table: TableName::new(TABLE)?,
        partition: Partition(partition),
    })
}

fn table(partition: u32) -> Result<TablePartition<MemoryStore>> {
    Ok(TablePartition::open(
        MemoryStore::new(),
        TableConfig::new(TableName::new(TABLE)?, Partition(partition)),
    )?)
}

/// Commits `RECORDS` versions to `t` in commits of `PER_APPEND`, each
/// replicated by one append through `writer`. Returns the versions'
/// changelog offsets as the writer reported them.
fn write_history(
    t: &mut TablePartition<MemoryStore>,
    writer: &mut KafkaChangelogWriter,
) -> Result<()> {
    let mut v = 0u64;
    for commit in 0..RECORDS / PER_APPEND {
        for _ in 0..PER_APPEND {
            let key = format!("key-{:04}", v % KEYS);
            let lineage = Some(Lineage {
                topic: "orders-in".into(),
                partition: Partition(PARTITION),
                offset: Offset(v),
            });
            if v % 11 == 10 {
                t.delete(key.as_bytes(), lineage);
            } else {
                t.put(key.as_bytes(), format!("value-{v}").as_bytes(), lineage);
            }
            v += 1;
        }
        t.commit_to(writer, Timestamp(1_000 + commit), &[])?;
    }
    Ok(())
}

/// Asserts that `b` holds exactly the same versions, values, history and
/// changelog positions as `a`.
fn assert_same(a: &TablePartition<MemoryStore>, b: &TablePartition<MemoryStore>) -> Result<()> {
    ensure!(
        a.latest_version() == b.latest_version(),
        "latest {:?} vs {:?}",
        a.latest_version(),
        b.latest_version()
    );
    ensure!(
        a.checkpoint().changelog == b.checkpoint().changelog,
        "{:?} vs {:?}",
        a.checkpoint(),
        b.checkpoint()
    );
    ensure!(a.checkpoint().time == b.checkpoint().time);
    let (ra, rb) = (a.reader(), b.reader());
    for v in 1..=a.latest_version().0 {
        let (va, vb) = (
            ra.version_record(Version(v))?,
            rb.version_record(Version(v))?,
        );
        ensure!(va.is_some() && va == vb, "version {v}: {va:?} vs {vb:?}");
    }
    let all = HistoryQuery {
        limit: 10_000,
        ..HistoryQuery::default()
    };
    for k in 0..KEYS {
        let key = format!("key-{k:04}");
        ensure!(
            ra.get(key.as_bytes())? == rb.get(key.as_bytes())?,
            "latest of {key}"
        );
        let (ha, hb) = (
            ra.history(key.as_bytes(), &all)?,
            rb.history(key.as_bytes(), &all)?,
        );
        ensure!(!ha.entries.is_empty() && ha == hb, "history of {key}");
    }
    Ok(())
}

/// A reader that reports the offsets restores ask for, and can pretend the
/// log ends early (to leave a table checkpointed mid-log).
struct Recording<'a> {
    inner: &'a mut KafkaChangelogReader,
    froms: Vec<Offset>,
    stop_at: Option<u64>,
}

impl ChangelogReader for Recording<'_> {
    fn read(&mut self, from: Offset, max: usize) -> strata_state::Result<ChangelogBatch> {
        self.froms.push(from);
        let max = match self.stop_at {
            Some(stop) => (stop.saturating_sub(from.0) as usize).min(max),
            None => max,
        };
        if max == 0 {
            return Ok(ChangelogBatch {
                records: Vec::new(),
                end: true,
            });
        }
        let mut b = self.inner.read(from, max)?;
        if self
            .stop_at
            .is_some_and(|s| b.records.last().is_some_and(|(o, _)| o.0 + 1 >= s))
        {
            b.end = true;
        }
        Ok(b)
    }
}

fn restore(
    t: &mut TablePartition<MemoryStore>,
    log: &mut dyn ChangelogReader,
) -> Result<RestoreProgress> {
    let mut reports = 0;
    let p = t.restore_from(log, 512, &mut |_| reports += 1)?;
    ensure!(reports >= 1, "restore reported no progress");
    Ok(p)
}

/// Starts a broker and creates the 4-partition changelog topic.
fn setup() -> Result<(Tansu, KafkaConfig)> {
    let broker = Tansu::start()?;
    let config = config(&broker);
    let admin = KafkaAdmin::new(&config)?;
    let status = admin.ensure_topic(&TopicSpec::changelog(TOPIC, PARTITIONS))?;
    ensure!(status == TopicStatus::Created, "{status:?}");
    Ok((broker, config))
}

/// (a) 5,000 records in appends of 1,000 to partition 2; a fresh table
/// restored from the topic reaches all 5,000 (Tansu's listed high watermark
/// would say 4,001: the end is found by EOF) with identical versions and
/// values. Then (b): a table checkpointed mid-log reads only the tail, and
/// a reused reader picks up records appended after it reached the end.
#[test]
fn restore_reaches_the_true_end_and_resumes_from_a_checkpoint() -> Result<()> {
    let (_broker, config) = setup()?;
    let producer = AckedProducer::new(&config)?;
    let mut writer = KafkaChangelogWriter::new(producer.clone(), TOPIC, location(PARTITION)?);
    let mut source = table(PARTITION)?;
    write_history(&mut source, &mut writer)?;
    ensure!(source.latest_version() == Version(RECORDS));
    // The writer's offsets are dense from 0 on an otherwise empty partition.
    ensure!(
        source.checkpoint().changelog == Some(ChangelogPosition(Offset(RECORDS - 1))),
        "source checkpoint {:?}",
        source.checkpoint()
    );

    // (a) Full restore.
    let mut reader = KafkaChangelogReader::new(&config, TOPIC, location(PARTITION)?)?;
    let mut full = table(PARTITION)?;
    let p = restore(&mut full, &mut reader)?;
    ensure!(
        p.read == RECORDS && p.applied == RECORDS,
        "read {} applied {}",
        p.read,
        p.applied
    );
    ensure!(
        p.position == Offset(RECORDS),
        "restore stopped at {:?}, not the true end",
        p.position
    );
    assert_same(&source, &full)?;

    // (b) A table that stopped halfway reads only the tail.
    let half = RECORDS / 2;
    let mut partial = table(PARTITION)?;
    let mut first_half = KafkaChangelogReader::new(&config, TOPIC, location(PARTITION)?)?;
    let p = restore(
        &mut partial,
        &mut Recording {
            inner: &mut first_half,
            froms: Vec::new(),
            stop_at: Some(half),
        },
    )?;
    ensure!(
        p.read == half && partial.latest_version() == Version(half),
        "first half: {p:?}"
    );
    ensure!(partial.checkpoint().changelog == Some(ChangelogPosition(Offset(half - 1))));
    let mut tail = KafkaChangelogReader::new(&config, TOPIC, location(PARTITION)?)?;
    let mut rec = Recording {
        inner: &mut tail,
        froms: Vec::new(),
        stop_at: None,
    };
    let p = restore(&mut partial, &mut rec)?;
    ensure!(
        rec.froms.first() == Some(&Offset(half)),
        "tail restore started at {:?}",
        rec.froms.first()
    );
    ensure!(
        p.read == RECORDS - half && p.applied == RECORDS - half,
        "tail: {p:?}"
    );
    assert_same(&source, &partial)?;

    // A reader that already reached the end sees records appended since.
    source.put(b"key-0000", b"after", None);
    source.commit_to(&mut writer, Timestamp(9_000), &[])?;
    let p = restore(&mut full, &mut reader)?;
    ensure!(
        p.read == 1 && p.applied == 1 && p.position == Offset(RECORDS + 1),
        "{p:?}"
    );
    ensure!(full.reader().get(b"key-0000")?.map(|v| v.value) == Some(b"after".to_vec()));
    // And an immediate re-read at the end is promptly empty.
    let p = restore(&mut full, &mut reader)?;
    ensure!(p.read == 0, "{p:?}");
    assert_same(&source, &full)?;

    // Nothing leaked into the other partitions.
    for other in (0..PARTITIONS).filter(|p| *p != PARTITION) {
        let mut r = KafkaChangelogReader::new(&config, TOPIC, location(other)?)?;
        let b = r.read(Offset(0), 10)?;
        ensure!(
            b.records.is_empty() && b.end,
            "partition {other} holds {} records",
            b.records.len()
        );
    }
    producer.flush(Duration::from_secs(5))?;
    Ok(())
}

/// (d) An empty changelog partition restores to nothing, ending by EOF
/// (a reader that did not see EOF would fail after its read timeout).
#[test]
fn empty_partition_restores_to_nothing_promptly() -> Result<()> {
    let (_broker, config) = setup()?;
    let mut reader = KafkaChangelogReader::new(&config, TOPIC, location(0)?)?;
    let mut t = table(0)?;
    let started = Instant::now();
    let p = restore(&mut t, &mut reader)?;
    let took = started.elapsed();
    ensure!(
        p.read == 0 && p.applied == 0 && p.position == Offset(0),
        "{p:?}"
    );
    ensure!(t.latest_version() == Version::ZERO && t.checkpoint().changelog.is_none());
    ensure!(
        took < config.read_timeout,
        "took {took:?}: the end was not found by EOF"
    );
    // Reading again at the same (end) position is also prompt and empty.
    let b = reader.read(Offset(0), 100)?;
    ensure!(b.records.is_empty() && b.end);
    Ok(())
}

/// A read from beyond the log's end (local state ahead of the changelog,
/// e.g. after the broker lost data) is an error, never "nothing to
/// restore". (Kafka answers OFFSET_OUT_OF_RANGE at once; Tansu answers an
/// empty fetch, so the read fails after the read timeout.)
#[test]
fn read_beyond_the_end_is_an_error() -> Result<()> {
    let (_broker, mut config) = setup()?;
    config.read_timeout = Duration::from_secs(2);
    let producer = AckedProducer::new(&config)?;
    let mut writer = KafkaChangelogWriter::new(producer, TOPIC, location(PARTITION)?);
    let mut source = table(PARTITION)?;
    source.put(b"k", b"v", None);
    source.commit_to(&mut writer, Timestamp(1), &[])?;
    let mut reader = KafkaChangelogReader::new(&config, TOPIC, location(PARTITION)?)?;
    match reader.read(Offset(10), 100) {
        Ok(b) => bail!(
            "read beyond the end returned {} records, end {}",
            b.records.len(),
            b.end
        ),
        Err(e) => ensure!(e.to_string().contains("offset 10"), "{e}"),
    }
    // The reader recovers when pointed back inside the log.
    let b = reader.read(Offset(0), 100)?;
    ensure!(
        b.records.len() == 1 && b.end,
        "{} records, end {}",
        b.records.len(),
        b.end
    );
    Ok(())
}

/// A changelog topic that does not exist fails promptly and says so,
/// rather than restoring nothing or waiting out the read timeout.
#[test]
fn absent_topic_fails_promptly() -> Result<()> {
    let (_broker, config) = setup()?;
    let mut reader = KafkaChangelogReader::new(&config, "no-such-changelog", location(PARTITION)?)?;
    let started = Instant::now();
    let err = match reader.read(Offset(0), 100) {
        Ok(b) => bail!(
            "read of an absent topic returned {} records, end {}",
            b.records.len(),
            b.end
        ),
        Err(e) => e,
    };
    ensure!(
        started.elapsed() < config.read_timeout,
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    ensure!(
        text.contains("no-such-changelog") && text.contains("partition 2"),
        "{text}"
    );
    // A partition beyond the topic's count is refused the same way.
    let mut reader = KafkaChangelogReader::new(&config, TOPIC, location(PARTITIONS)?)?;
    ensure!(reader.read(Offset(0), 100).is_err());
    Ok(())
}

/// (c) Topic administration: an existing topic with another partition
/// count is refused with the topic and both counts named; a compacted topic
/// is refused as a changelog; the changelog settings reach the broker.
#[test]
fn admin_checks_partition_counts_and_settings() -> Result<()> {
    let (_broker, config) = setup()?;
    let admin = KafkaAdmin::new(&config)?;
    ensure!(admin.partition_count(TOPIC)? == Some(PARTITIONS));
    ensure!(admin.partition_count("missing-topic")?.is_none());
    // Asking did not create it.
    ensure!(admin.partition_count("missing-topic")?.is_none());
    ensure!(admin.ensure_topic(&TopicSpec::changelog(TOPIC, PARTITIONS))? == TopicStatus::Existed);

    match admin.ensure_topic(&TopicSpec::changelog(TOPIC, 3)) {
        Err(Error::Topology(msg)) => {
            ensure!(
                msg.contains(TOPIC)
                    && msg.contains("4 partitions")
                    && msg.contains("3 are expected"),
                "{msg}"
            );
        }
        other => bail!("expected a partition-count mismatch, got {other:?}"),
    }
    // The mismatch changed nothing.
    ensure!(admin.partition_count(TOPIC)? == Some(PARTITIONS));

    let settings = admin
        .topic_configs(TOPIC)?
        .context("the broker did not describe the changelog's settings")?;
    ensure!(
        settings.get("cleanup.policy").map(String::as_str) == Some("delete"),
        "{settings:?}"
    );
    ensure!(
        settings.get("retention.ms").map(String::as_str) == Some("-1"),
        "{settings:?}"
    );

    let compacted = TopicSpec::new("compacted", 1).config("cleanup.policy", "compact");
    ensure!(admin.ensure_topic(&compacted)? == TopicStatus::Created);
    match admin.ensure_topic(&TopicSpec::changelog("compacted", 1)) {
        Err(Error::Topology(msg)) => ensure!(
            msg.contains("compacted") && msg.contains("compact"),
            "{msg}"
        ),
        other => bail!("expected a compaction refusal, got {other:?}"),
    }

    let several = [TopicSpec::new("in-a", 2), TopicSpec::new("in-b", 2)];
    ensure!(admin.ensure_topics(&several)? == vec![TopicStatus::Created, TopicStatus::Created]);
    ensure!(admin.partition_count("in-b")? == Some(2));
    Ok(())
}

/// An append the broker never acknowledges is "outcome unknown", and the
/// table partition refuses further commits until it has restored.
#[test]
fn unacknowledged_append_is_outcome_unknown() -> Result<()> {
    let (broker, mut config) = setup()?;
    config.delivery_timeout = Duration::from_secs(2);
    let producer = AckedProducer::new(&config)?;
    let mut writer = KafkaChangelogWriter::new(producer, TOPIC, location(PARTITION)?);
    let mut t = table(PARTITION)?;
    t.put(b"k", b"v1", None);
    t.commit_to(&mut writer, Timestamp(1), &[])?;
    drop(broker);

    t.put(b"k", b"v2", None);
    let started = Instant::now();
    let err = match t.commit_to(&mut writer, Timestamp(2), &[]) {
        Ok(s) => bail!("commit to a stopped broker succeeded: {s:?}"),
        Err(e) => e,
    };
    ensure!(is_outcome_unknown(&err), "not outcome-unknown: {err}");
    ensure!(err.to_string().contains("outcome unknown"), "{err}");
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    ensure!(t.needs_restore());
    ensure!(t.reader().get(b"k")?.map(|v| v.value) == Some(b"v1".to_vec()));
    Ok(())
}
