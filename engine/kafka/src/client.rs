//! Kafka client configuration: one typed [`KafkaConfig`], validated once,
//! from which the engine builds every librdkafka client it needs (a group
//! consumer for inputs, an assign-only consumer for changelog restores, a
//! producer, an admin client).
//!
//! Invariants: every setting the engine relies on for correctness (manual
//! offset commits, read-committed isolation, idempotent `acks=all`
//! produces, partition EOF where asked) is set here and cannot be changed
//! through [`KafkaConfig::overrides`]; every wait a client does is bounded
//! by one of the typed timeouts; librdkafka's logs go to `tracing`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::error::{Error, Result};

/// librdkafka keys the engine sets itself because correctness depends on
/// them; [`KafkaConfig::overrides`] may not name them.
const PROTECTED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set `KafkaConfig::bootstrap_servers` instead",
    ),
    (
        "metadata.broker.list",
        "set `KafkaConfig::bootstrap_servers` instead",
    ),
    ("group.id", "the engine names its consumer groups itself"),
    (
        "enable.auto.commit",
        "the engine commits offsets only after a commit is durable",
    ),
    (
        "enable.auto.offset.store",
        "the engine stores offsets only after a commit is durable",
    ),
    (
        "isolation.level",
        "the engine must not read aborted transactional records",
    ),
    (
        "enable.partition.eof",
        "the engine finds a partition's end by the fetch path's EOF",
    ),
    (
        "enable.idempotence",
        "changelog appends rely on idempotent, ordered produces",
    ),
    (
        "acks",
        "changelog appends must be acknowledged by all in-sync replicas",
    ),
    (
        "request.required.acks",
        "changelog appends must be acknowledged by all in-sync replicas",
    ),
    (
        "transactional.id",
        "under exactly-once each task's producer has its own (`<application id>-task-<partition>`)",
    ),
    (
        "transaction.timeout.ms",
        "set `KafkaConfig::transaction_timeout` instead",
    ),
    (
        "auto.offset.reset",
        "restores must fail, not skip, when an offset is out of range",
    ),
    (
        "partition.assignment.strategy",
        "the engine's rebalance handling is incremental (cooperative-sticky)",
    ),
];

/// The codec used to compress produced record batches.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: cheap to compress and decompress; the default.
    #[default]
    Lz4,
    /// Snappy.
    Snappy,
    /// Gzip: smallest, slowest.
    Gzip,
}

impl Compression {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
        }
    }
}

/// How the engine talks to Kafka.
///
/// Build one with [`KafkaConfig::new`], adjust fields, and let the engine
/// [`validate`](KafkaConfig::validate) it (every client builder does).
///
/// ```
/// use std::time::Duration;
/// use strata_kafka::client::KafkaConfig;
///
/// let mut config = KafkaConfig::new("127.0.0.1:9092");
/// config.session_timeout = Duration::from_secs(6);
/// config.overrides.insert("socket.keepalive.enable".into(), "true".into());
/// config.validate()?;
/// # Ok::<(), strata_kafka::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Prefix of every client's `client.id` (`{prefix}-producer`,
    /// `{prefix}-restore`, …), so broker logs say which client was whose.
    pub client_id_prefix: String,
    /// Consumer group session timeout (`session.timeout.ms`): how long the
    /// group coordinator waits for a heartbeat before evicting a member.
    /// Default 45 s; tests use about 6 s (Tansu answers a JoinGroup only
    /// after about half of it).
    pub session_timeout: Duration,
    /// Network request timeout (`socket.timeout.ms`, and the producer's
    /// `request.timeout.ms`); also bounds admin operations and metadata
    /// queries. Default 30 s.
    pub request_timeout: Duration,
    /// How long a produced record may take to be acknowledged
    /// (`delivery.timeout.ms`) before its outcome is reported unknown.
    /// Default 120 s.
    pub delivery_timeout: Duration,
    /// How long a changelog read may wait without receiving a record or
    /// reaching the end of the partition before it fails. Default 30 s.
    pub read_timeout: Duration,
    /// Under exactly-once, how long a task's transaction may stay open
    /// before the broker aborts it (`transaction.timeout.ms`; at least
    /// `delivery_timeout` is used). Default 60 s.
    pub transaction_timeout: Duration,
    /// `fetch.queue.backoff.ms`: how long a consumer postpones fetching a
    /// partition whose local queue is full. librdkafka's default (1000 ms)
    /// throttles a fast consumer to about 190,000 records/s; 10 ms (the
    /// default here) lifts it past 2M records/s.
    pub fetch_queue_backoff: Duration,
    /// `linger.ms`: how long the producer waits to fill a batch. Default
    /// 5 ms: appends are already batched by the caller, so lingering longer
    /// only adds commit latency.
    pub linger: Duration,
    /// Compression of produced batches. Default LZ4.
    pub compression: Compression,
    /// How the group rebalances. Default [`RebalanceProtocol::Cooperative`].
    pub rebalance: RebalanceProtocol,
    /// librdkafka settings passed through verbatim to every client, applied
    /// after the engine's own. Keys the engine relies on for correctness
    /// (offset commits, isolation, idempotence, acks, EOF, offset reset,
    /// assignment strategy, group id, bootstrap servers) are rejected.
    pub overrides: BTreeMap<String, String>,
}

/// How a consumer group moves partitions between its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RebalanceProtocol {
    /// Incremental (`cooperative-sticky`): a rebalance revokes only the
    /// partitions that move, in a first round, and assigns them in a
    /// second one that the members that gave something up start by
    /// rejoining. Tasks that stay keep running. The default.
    #[default]
    Cooperative,
    /// Eager (`range`): every rebalance revokes every partition of every
    /// member and assigns them all again in one round; tasks that stay
    /// on a member are closed and reopened (restoring only their
    /// changelog tail). For brokers that do not run the second round of
    /// an incremental rebalance: Tansu 0.6 answers the rejoin of a member
    /// of a stable group with the current generation and
    /// REBALANCE_IN_PROGRESS on SyncGroup, but never tells the other
    /// members to rejoin, so the revoked partitions stay unassigned. Also
    /// used for topologies reading several co-partitioned topics, which
    /// need `range` to co-locate them.
    Eager,
}

impl KafkaConfig {
    /// Defaults for a cluster reachable at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            client_id_prefix: "strata".into(),
            session_timeout: Duration::from_secs(45),
            rebalance: RebalanceProtocol::Cooperative,
            request_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(30),
            transaction_timeout: Duration::from_secs(60),
            fetch_queue_backoff: Duration::from_millis(10),
            linger: Duration::from_millis(5),
            compression: Compression::default(),
            overrides: BTreeMap::new(),
        }
    }

    /// Checks every setting, naming the offending key.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty or malformed bootstrap list, a
    /// timeout outside librdkafka's range (or zero, which librdkafka would
    /// take as "forever"), or an override of a protected key.
    pub fn validate(&self) -> Result<()> {
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config(
                "bootstrap_servers",
                "is empty: give at least one host:port",
            ));
        }
        if let Some(bad) = servers.iter().find(|s| !is_host_port(s)) {
            return Err(Error::config(
                "bootstrap_servers",
                format!("{bad:?} is not host:port (in {:?})", self.bootstrap_servers),
            ));
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.client_id_prefix.is_empty() || !self.client_id_prefix.chars().all(id_ok) {
            return Err(Error::config(
                "client_id_prefix",
                format!(
                    "{:?} must be 1 or more characters of [A-Za-z0-9._-]",
                    self.client_id_prefix
                ),
            ));
        }
        check_ms("session_timeout", self.session_timeout, 1, 3_600_000)?;
        check_ms("request_timeout", self.request_timeout, 10, 300_000)?;
        check_ms(
            "delivery_timeout",
            self.delivery_timeout,
            1,
            i32::MAX as u64,
        )?;
        check_ms("read_timeout", self.read_timeout, 1, u32::MAX as u64)?;
        check_ms(
            "transaction_timeout",
            self.transaction_timeout,
            1000,
            i32::MAX as u64,
        )?;
        check_ms("fetch_queue_backoff", self.fetch_queue_backoff, 0, 300_000)?;
        check_ms("linger", self.linger, 0, 900_000)?;
        if self.delivery_timeout <= self.linger {
            return Err(Error::config(
                "delivery_timeout",
                format!(
                    "{} ms must exceed linger ({} ms), or every record would time out while lingering",
                    self.delivery_timeout.as_millis(),
                    self.linger.as_millis()
                ),
            ));
        }
        for key in self.overrides.keys() {
            if key.trim().is_empty() {
                return Err(Error::config("overrides", "contains an empty key"));
            }
            if let Some((_, why)) = PROTECTED.iter().find(|(k, _)| k == key) {
                return Err(Error::config(
                    format!("overrides.{key}"),
                    format!("cannot be overridden: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// Settings shared by every client.
    fn base(&self, role: &str) -> Result<ClientConfig> {
        self.validate()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers.trim())
            .set("client.id", format!("{}-{role}", self.client_id_prefix))
            .set("socket.timeout.ms", ms(self.request_timeout))
            // Topics are created explicitly, with the right partition count
            // and configs (see `admin`); never implicitly by a metadata
            // request or a produce, with broker defaults.
            .set("allow.auto.create.topics", "false")
            // The engine logs through `tracing`; let librdkafka emit
            // everything up to info and filter there.
            .set_log_level(RDKafkaLogLevel::Info);
        Ok(c)
    }

    /// Applies the pass-through settings last (protected keys were
    /// rejected by `validate`).
    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        if self.overrides.contains_key("debug") {
            // Asked for librdkafka's debug contexts: let them through.
            c.set_log_level(RDKafkaLogLevel::Debug);
        }
        c
    }

    /// Settings shared by both kinds of consumer.
    fn consumer_base(&self, role: &str) -> Result<ClientConfig> {
        let mut c = self.base(role)?;
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never expose records of aborted or open transactions: the
            // changelog and outputs are written transactionally under
            // exactly-once.
            .set("isolation.level", "read_committed")
            .set("fetch.queue.backoff.ms", ms(self.fetch_queue_backoff));
        Ok(c)
    }

    /// A consumer of input topics in consumer group `group_id`.
    ///
    /// Offsets are committed by the engine only (no auto-commit, no
    /// automatic offset store); assignment is cooperative-sticky, so a
    /// rebalance only moves the partitions that must move; a partition
    /// without a committed offset starts at its earliest record; EOF events
    /// are emitted when `partition_eof`.
    pub(crate) fn group_consumer(
        &self,
        group_id: &str,
        partition_eof: bool,
    ) -> Result<ClientConfig> {
        if group_id.trim().is_empty() {
            return Err(Error::config("group.id", "is empty"));
        }
        let mut c = self.consumer_base("consumer")?;
        c.set("group.id", group_id)
            .set(
                "partition.assignment.strategy",
                match self.rebalance {
                    RebalanceProtocol::Cooperative => "cooperative-sticky",
                    RebalanceProtocol::Eager => "range",
                },
            )
            .set("session.timeout.ms", ms(self.session_timeout))
            // librdkafka wants heartbeats well inside the session timeout;
            // a third of it (at most librdkafka's default 3 s) leaves room
            // for two missed heartbeats.
            .set(
                "heartbeat.interval.ms",
                ms((self.session_timeout / 3)
                    .clamp(Duration::from_millis(1), Duration::from_secs(3))),
            )
            .set("auto.offset.reset", "earliest")
            .set(
                "enable.partition.eof",
                if partition_eof { "true" } else { "false" },
            );
        Ok(self.finish(c))
    }

    /// An assign-only consumer that reads one changelog partition from a
    /// given offset to its end.
    ///
    /// librdkafka's `assign` requires a `group.id`, so the consumer has a
    /// nominal one (`{prefix}-restore`), but it never subscribes, joins or
    /// commits. EOF events are on: the end of a changelog is found by the
    /// fetch path's EOF, because some brokers (Tansu) answer ListOffsets
    /// with a wrong high watermark. An out-of-range offset is an error
    /// (`auto.offset.reset=error`) rather than a silent jump.
    pub(crate) fn restore_consumer(&self) -> Result<ClientConfig> {
        let mut c = self.consumer_base("restore")?;
        c.set("group.id", format!("{}-restore", self.client_id_prefix))
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            // A restore reads as fast as it can; a fetch that finds nothing
            // (at the end) should come back quickly so EOF is prompt.
            .set("fetch.wait.max.ms", "100");
        Ok(self.finish(c))
    }

    /// A producer for changelog records (and outputs).
    ///
    /// `acks=all` and idempotence: an acknowledged record is on every
    /// in-sync replica, retries never duplicate or reorder records within a
    /// partition, so an append's offsets follow its records' order.
    pub(crate) fn producer(&self) -> Result<ClientConfig> {
        let mut c = self.base("producer")?;
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", ms(self.linger))
            .set("compression.codec", self.compression.as_librdkafka())
            .set("request.timeout.ms", ms(self.request_timeout))
            .set("delivery.timeout.ms", ms(self.delivery_timeout))
            // Commits arrive as bursts of up to `max_staged` records (10,000
            // by default): let one batch carry a whole burst, up to 1 MiB,
            // and let the local queue hold several commits of several
            // partitions before `send` reports it full.
            .set("batch.num.messages", "10000")
            .set("batch.size", "1048576")
            .set("queue.buffering.max.messages", "1000000");
        Ok(self.finish(c))
    }

    /// An admin client (topic creation, metadata).
    pub(crate) fn admin(&self) -> Result<ClientConfig> {
        let c = self.base("admin")?;
        Ok(self.finish(c))
    }
}

/// Whether `s` looks like `host:port` with a numeric port.
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Checks that `d` in whole milliseconds is within `[min, max]`.
fn check_ms(key: &str, d: Duration, min: u64, max: u64) -> Result<()> {
    let v = d.as_millis();
    if v < u128::from(min) || v > u128::from(max) {
        return Err(Error::config(
            key,
            format!("{v} ms is outside {min}..={max} ms"),
        ));
    }
    Ok(())
}

/// A duration as librdkafka's millisecond string.
fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Creates a client, turning librdkafka's refusal of a setting into a
/// [`Error::Config`] that names the key.
pub(crate) fn create<C, T>(config: &ClientConfig, context: C, what: &str) -> Result<T>
where
    T: FromClientConfigAndContext<C>,
    C: ClientContext,
{
    T::from_config_and_context(config, context).map_err(|e| match e {
        KafkaError::ClientConfig(_, desc, key, value) => Error::config(
            format!("overrides.{key}"),
            format!("librdkafka refused {value:?}: {desc}"),
        ),
        e => Error::kafka(format!("creating the {what}"), e),
    })
}

/// A client context that sends librdkafka's logs and errors to `tracing`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // A restore reaching the end of its partition is the expected way
        // to find the end, not a problem.
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(%error, reason, "end of partition");
            return;
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for TracingContext {}

/// Forwards one librdkafka log line to `tracing`; other contexts in the
/// engine call this from their own `ClientContext::log`.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, message, "librdkafka");
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility, message, "librdkafka")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, message, "librdkafka");
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility, message, "librdkafka")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KafkaConfig {
        KafkaConfig::new("127.0.0.1:9092")
    }

    fn key_of(r: Result<()>) -> String {
        match r {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        valid().validate().unwrap();
        let p = valid().producer().unwrap();
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        let g = valid().group_consumer("app", true).unwrap();
        assert_eq!(g.get("enable.auto.commit"), Some("false"));
        assert_eq!(g.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(
            g.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(g.get("isolation.level"), Some("read_committed"));
        assert_eq!(g.get("enable.partition.eof"), Some("true"));
        assert_eq!(g.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(g.get("session.timeout.ms"), Some("45000"));
        assert_eq!(g.get("heartbeat.interval.ms"), Some("3000"));
        let r = valid().restore_consumer().unwrap();
        assert_eq!(r.get("enable.partition.eof"), Some("true"));
        assert_eq!(r.get("auto.offset.reset"), Some("error"));
    }

    #[test]
    fn bad_bootstrap_names_the_key() {
        for bad in [
            "",
            "  ",
            "localhost",
            "host:",
            ":9092",
            "a:1,,b:2",
            "h:99999",
        ] {
            let mut c = valid();
            c.bootstrap_servers = bad.into();
            assert_eq!(key_of(c.validate()), "bootstrap_servers", "{bad:?}");
        }
        let mut c = valid();
        c.bootstrap_servers = "a:1, b:2".into();
        c.validate().unwrap();
    }

    #[test]
    fn zero_and_huge_timeouts_are_refused() {
        let mut c = valid();
        c.delivery_timeout = Duration::ZERO;
        assert_eq!(key_of(c.validate()), "delivery_timeout");
        let mut c = valid();
        c.session_timeout = Duration::from_secs(7200);
        assert_eq!(key_of(c.validate()), "session_timeout");
        let mut c = valid();
        c.read_timeout = Duration::ZERO;
        assert_eq!(key_of(c.validate()), "read_timeout");
    }

    #[test]
    fn protected_overrides_are_refused_others_pass_through() {
        let mut c = valid();
        c.overrides
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(key_of(c.validate()), "overrides.enable.auto.commit");
        let mut c = valid();
        c.overrides
            .insert("socket.keepalive.enable".into(), "true".into());
        assert_eq!(
            c.producer().unwrap().get("socket.keepalive.enable"),
            Some("true")
        );
    }

    #[test]
    fn librdkafka_refusal_names_the_key() {
        let mut c = valid();
        c.overrides.insert("no.such.setting".into(), "1".into());
        let cfg = c.admin().unwrap();
        let r: Result<rdkafka::admin::AdminClient<TracingContext>> =
            create(&cfg, TracingContext, "admin client");
        match r {
            Err(Error::Config { key, .. }) => assert_eq!(key, "overrides.no.such.setting"),
            Err(e) => panic!("expected a config error, got {e}"),
            Ok(_) => panic!("expected a config error, got a client"),
        }
    }
}
