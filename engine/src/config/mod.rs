//! The app's typed configuration, validated once at build time with errors
//! that name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strata_state::store::rocks::RocksConfig;

use crate::kafka::client::KafkaConfig;
use crate::partitioner::Partitioner;
use crate::{Error, Result};

mod security;

pub use security::{ClientTls, GrpcSecurity, MIN_TOKEN_LEN, Pem, ServerTls, TlsIdentity};

/// What a commit promises.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Guarantee {
    /// Every input record's effects survive a crash; after one, records
    /// since the last commit are processed again (their effects may apply
    /// twice).
    #[default]
    AtLeastOnce,
    /// Each commit of a task is one Kafka transaction of the task's own
    /// producer (transactional id `<application id>-task-<partition>`):
    /// its changelog records, outputs, dead letters and input offsets are
    /// committed together or not at all, and local state is written only
    /// after the transaction commits. After a crash nothing is processed
    /// twice: tables, and outputs read with `read_committed`, hold every
    /// input record's effects once. A new owner of a partition fences the
    /// previous one (docs/commit-protocol.md §8).
    ExactlyOnce,
}

/// Where a new consumer group starts reading.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced after the group starts.
    Latest,
}

/// Settings of an app.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The consumer group, and the prefix of internal topics
    /// (`<id>-<table>-changelog`, `<id>-dlq`).
    pub application_id: String,
    /// Kafka clients.
    pub kafka: KafkaConfig,
    /// Where table partitions live (`<dir>/<application id>/<table>/<partition>`).
    pub state_dir: PathBuf,
    /// The processing guarantee.
    pub guarantee: Guarantee,
    /// How often tasks commit.
    pub commit_interval: Duration,
    /// Threads running tasks.
    pub worker_threads: usize,
    /// How far below the rest of the process the worker threads run, as a
    /// Linux nice increment (0-19; ignored elsewhere). When the CPUs are
    /// busy, the scheduler then gives them to the gRPC server's threads
    /// first, so queries keep a bounded latency while processing absorbs
    /// the cost; when they are idle it changes nothing. 0: processing and
    /// queries share the CPUs equally. Default 0. See docs/query.md,
    /// "Queries and processing on the same CPUs".
    pub worker_nice: u8,
    /// Outputs buffered by a task before it commits early.
    pub max_buffered_outputs: usize,
    /// Records a worker takes from one partition before moving to the next.
    pub poll_batch: usize,
    /// Logical topic name -> physical name. Unmapped names are physical.
    pub topics: BTreeMap<String, String>,
    /// Logical input topic name -> the partitioner its producers used
    /// (unnamed input topics: [`Partitioner::Murmur2`], Kafka's default;
    /// repartition topics are always murmur2, the engine writes them).
    /// Routing a key to its partition's owner relies on it; processing
    /// does not. Every record is checked against it: a contradiction is
    /// counted (`strata_partitioner_mismatched_records_total`), warned
    /// about once with the partitioner that fits, and makes reads of the
    /// topic's tables ask every partition. See docs/routing.md.
    pub partitioners: BTreeMap<String, Partitioner>,
    /// Start position of a new group.
    pub start_position: StartPosition,
    /// Storage settings shared by all table partitions.
    pub rocks: RocksConfig,
    /// Changelog records applied per restore batch.
    pub restore_batch: usize,
    /// Most versions, per table partition, that a replay reads backwards
    /// from its target to find where each input topic stood (the lineage
    /// of the last input record of every topic). A replay whose topics are
    /// not all found within it is refused. Default 100,000.
    pub replay_lineage_scan: usize,
    /// How long a rebalance may wait for workers to commit and release
    /// revoked partitions.
    pub revoke_timeout: Duration,
    /// Static group membership (`group.instance.id`): an instance that
    /// restarts within the session timeout keeps its partitions without a
    /// rebalance. Must be unique per instance.
    pub instance_id: Option<String>,
    /// Create missing internal and output topics (and check changelog
    /// settings) through the admin API. When false, they must exist with
    /// the input's partition count (checked through metadata only).
    pub manage_topics: bool,
    /// Where to serve the gRPC query and admin services (`strata.v1`, with
    /// health and reflection). `None`: no server. Port 0 picks a free port
    /// (see `RunningApp::grpc_addr`).
    pub grpc_listen: Option<SocketAddr>,
    /// Bounds of the query service.
    pub query: QueryConfig,
    /// The gRPC endpoint this instance serves, as other instances and
    /// clients reach it (`http://10.0.0.5:7001`). When set, the instance
    /// publishes it with the partitions it owns to the owner directory
    /// (`<application id>-directory`, see [`crate::directory`]); when
    /// `None`, it publishes nothing and no query is routed to it.
    pub advertised_endpoint: Option<String>,
    /// How often the owner directory publisher looks for ownership
    /// changes (the bound on how stale this instance's entry is). Default
    /// 1 s.
    pub directory_interval: Duration,
    /// How long an owner directory entry stays valid without a heartbeat:
    /// entries of crashed instances are ignored after it. Instances
    /// heartbeat every third of it. `None` (the default): three times
    /// `kafka.session_timeout`. Instances' clocks must agree to well within
    /// it.
    pub directory_ttl: Option<Duration>,
    /// TLS and bearer tokens of the gRPC server and of forwarding between
    /// instances. Default: all off (plaintext, no tokens).
    pub grpc_security: GrpcSecurity,
}

/// Bounds and defaults of the gRPC query service.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// Threads of the server's tokio runtime.
    pub threads: usize,
    /// Items per page when a request says 0 (Scan, Diff, History).
    pub default_page_size: u32,
    /// Most items per page; larger requests are clamped.
    pub max_page_size: u32,
    /// Largest request or response message, in bytes; pages are cut to fit
    /// and larger requests are refused (RESOURCE_EXHAUSTED).
    pub max_message_bytes: usize,
    /// Most changed keys a Diff reads per partition and page.
    pub max_diff_keys: usize,
    /// Changes listed per partition by a Rewind that says 0.
    pub default_rewind_listed: u32,
    /// Most changes listed per partition by a Rewind.
    pub max_rewind_listed: u32,
    /// Deadline of a unary call whose client set none, and the longest
    /// deadline a unary call gets.
    pub default_deadline: Duration,
    /// Most times a request may be forwarded between instances to reach a
    /// partition's owner (a request may ask for fewer, or up to 8).
    pub max_hops: u32,
    /// How long connecting to another instance may take when forwarding.
    pub connect_timeout: Duration,
    /// How often a change feed (Subscribe) that has delivered everything
    /// looks for new commits of a partition served here. (Idle feeds send
    /// a heartbeat every second regardless.)
    pub subscribe_poll: Duration,
    /// Most changes per Subscribe message.
    pub max_subscribe_batch: u32,
    /// Confirm a miss: when the partition a key's hash names does not hold
    /// it, Get and History ask every other partition before answering
    /// absent, so a key its producer placed elsewhere (an explicit
    /// partition, a partitioner other than the declared one that no record
    /// has yet contradicted) is still found. Costs one read of every
    /// partition per miss. Default true; set false when every producer is
    /// known to use the declared partitioner.
    pub confirm_misses: bool,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            threads: 2,
            default_page_size: 1000,
            max_page_size: 10_000,
            max_message_bytes: 4 << 20,
            max_diff_keys: 100_000,
            default_rewind_listed: 100,
            max_rewind_listed: 10_000,
            default_deadline: Duration::from_secs(30),
            max_hops: 3,
            connect_timeout: Duration::from_secs(1),
            subscribe_poll: Duration::from_millis(20),
            max_subscribe_batch: 1000,
            confirm_misses: true,
        }
    }
}

impl QueryConfig {
    /// Checks every bound, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 || self.threads > 64 {
            return Err(Error::config("query.threads", "must be between 1 and 64"));
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return Err(Error::config(
                "query.default_page_size",
                "must be at least 1 and at most query.max_page_size",
            ));
        }
        if self.max_message_bytes < 64 << 10 {
            return Err(Error::config(
                "query.max_message_bytes",
                "must be at least 64 KiB",
            ));
        }
        if self.max_hops == 0 || self.max_hops > 8 {
            return Err(Error::config("query.max_hops", "must be between 1 and 8"));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("query.connect_timeout", "must be positive"));
        }
        if self.subscribe_poll.is_zero() || self.subscribe_poll > Duration::from_secs(5) {
            return Err(Error::config(
                "query.subscribe_poll",
                "must be positive and at most 5 s",
            ));
        }
        if self.max_subscribe_batch == 0 {
            return Err(Error::config(
                "query.max_subscribe_batch",
                "must be at least 1",
            ));
        }
        if self.max_diff_keys == 0 {
            return Err(Error::config("query.max_diff_keys", "must be at least 1"));
        }
        if self.default_rewind_listed > self.max_rewind_listed {
            return Err(Error::config(
                "query.default_rewind_listed",
                "must be at most query.max_rewind_listed",
            ));
        }
        if self.default_deadline.is_zero() {
            return Err(Error::config("query.default_deadline", "must be positive"));
        }
        Ok(())
    }
}

impl AppConfig {
    /// Defaults for `application_id` against `bootstrap_servers`.
    pub fn new(
        application_id: impl Into<String>,
        bootstrap_servers: impl Into<String>,
    ) -> AppConfig {
        let application_id = application_id.into();
        let mut kafka = KafkaConfig::new(bootstrap_servers);
        kafka.client_id_prefix = application_id.clone();
        AppConfig {
            state_dir: std::env::temp_dir().join("strata"),
            application_id,
            kafka,
            guarantee: Guarantee::AtLeastOnce,
            commit_interval: Duration::from_millis(100),
            worker_threads: 2,
            worker_nice: 0,
            max_buffered_outputs: 10_000,
            poll_batch: 500,
            topics: BTreeMap::new(),
            partitioners: BTreeMap::new(),
            start_position: StartPosition::Earliest,
            rocks: RocksConfig::default(),
            restore_batch: 10_000,
            replay_lineage_scan: 100_000,
            revoke_timeout: Duration::from_secs(60),
            manage_topics: true,
            instance_id: None,
            grpc_listen: None,
            query: QueryConfig::default(),
            advertised_endpoint: None,
            directory_interval: Duration::from_secs(1),
            directory_ttl: None,
            grpc_security: GrpcSecurity::default(),
        }
    }

    /// The partitioner of a logical input topic's producers: the declared
    /// one, murmur2 for undeclared and repartition topics.
    pub fn partitioner(&self, logical: &str) -> Partitioner {
        if logical.starts_with(crate::topology::REPARTITION_PREFIX) {
            return Partitioner::Murmur2;
        }
        self.partitioners.get(logical).cloned().unwrap_or_default()
    }

    /// The physical name of a logical topic: mapped by `topics`;
    /// repartition topics are `<application id>-<name>-repartition`.
    pub fn physical(&self, logical: &str) -> String {
        if let Some(name) = logical.strip_prefix(crate::topology::REPARTITION_PREFIX) {
            return format!("{}-{name}-repartition", self.application_id);
        }
        self.topics
            .get(logical)
            .cloned()
            .unwrap_or_else(|| logical.to_string())
    }

    /// The changelog topic of a table.
    pub fn changelog_topic(&self, table: &str) -> String {
        format!("{}-{}-changelog", self.application_id, table)
    }

    /// The default dead-letter topic.
    pub fn dlq_topic(&self) -> String {
        format!("{}-dlq", self.application_id)
    }

    /// The topic whose consumer-group offsets record each task's last
    /// committed transaction under exactly-once (it holds no records).
    pub fn transactions_topic(&self) -> String {
        format!("{}-transactions", self.application_id)
    }

    /// The owner directory topic (one partition, compacted).
    pub fn directory_topic(&self) -> String {
        format!("{}-directory", self.application_id)
    }

    /// Checks every setting, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.application_id.is_empty()
            || self.application_id.len() > 100
            || !self.application_id.chars().all(id_ok)
        {
            return Err(Error::config(
                "application_id",
                format!(
                    "{:?}: use 1-100 characters of [A-Za-z0-9._-]",
                    self.application_id
                ),
            ));
        }
        self.kafka.validate()?;
        if self.commit_interval.is_zero() {
            return Err(Error::config("commit_interval", "must be positive"));
        }
        if self.worker_threads == 0 || self.worker_threads > 1024 {
            return Err(Error::config(
                "worker_threads",
                "must be between 1 and 1024",
            ));
        }
        if self.worker_nice > MAX_NICE {
            return Err(Error::config(
                "worker_nice",
                format!(
                    "{} is not a nice increment: use 0 to {MAX_NICE}",
                    self.worker_nice
                ),
            ));
        }
        if self.max_buffered_outputs == 0 {
            return Err(Error::config("max_buffered_outputs", "must be at least 1"));
        }
        if self.poll_batch == 0 {
            return Err(Error::config("poll_batch", "must be at least 1"));
        }
        if self.restore_batch == 0 {
            return Err(Error::config("restore_batch", "must be at least 1"));
        }
        if self.replay_lineage_scan == 0 {
            return Err(Error::config("replay_lineage_scan", "must be at least 1"));
        }
        for (l, p) in &self.topics {
            if p.is_empty() {
                return Err(Error::config(
                    format!("topics.{l}"),
                    "maps to an empty topic name",
                ));
            }
        }
        self.rocks.validate()?;
        self.query.validate()?;
        self.validate_directory()?;
        self.validate_security()?;
        Ok(())
    }

    /// The security section, and its agreement with the advertised
    /// endpoint: an instance advertising `https://` serves TLS and, since
    /// its peers advertise `https://` too, needs client TLS to forward.
    fn validate_security(&self) -> Result<()> {
        let sec = &self.grpc_security;
        sec.validate()?;
        let Some(e) = &self.advertised_endpoint else {
            return Ok(());
        };
        if e.starts_with("https://") {
            if sec.server_tls.is_none() {
                return Err(Error::config(
                    "grpc_security.server_tls",
                    format!(
                        "advertised_endpoint {e:?} is https: set grpc_security.server_tls (a certificate and key), \
                         or advertise http://"
                    ),
                ));
            }
            if sec.client_tls.is_none() {
                return Err(Error::config(
                    "grpc_security.client_tls",
                    format!(
                        "advertised_endpoint {e:?} is https, so other instances are reached over TLS too: set \
                         grpc_security.client_tls (at least the CA that issued their certificates)"
                    ),
                ));
            }
        } else if sec.server_tls.is_some() {
            return Err(Error::config(
                "advertised_endpoint",
                format!(
                    "{e:?} is http but grpc_security.server_tls is set, so the server speaks only TLS: \
                     advertise https://"
                ),
            ));
        }
        Ok(())
    }

    fn validate_directory(&self) -> Result<()> {
        if let Some(e) = &self.advertised_endpoint {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            let authority = rest.map(|r| r.trim_end_matches('/'));
            let ok = authority.is_some_and(|a| {
                !a.contains('/')
                    && a.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    })
            });
            if !ok {
                return Err(Error::config(
                    "advertised_endpoint",
                    format!("{e:?}: use http://host:port or https://host:port"),
                ));
            }
        }
        if self.directory_interval.is_zero() || self.directory_interval > Duration::from_secs(60) {
            return Err(Error::config(
                "directory_interval",
                "must be between 1 ms and 60 s",
            ));
        }
        let ttl = self.directory_ttl.unwrap_or(self.kafka.session_timeout * 3);
        if ttl < self.directory_interval * 3 {
            return Err(Error::config(
                "directory_ttl",
                format!(
                    "{} ms must be at least three directory_interval ({} ms): instances heartbeat every third of it{}",
                    ttl.as_millis(),
                    self.directory_interval.as_millis(),
                    if self.directory_ttl.is_none() {
                        " (it defaults to three kafka.session_timeout)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(())
    }
}

/// Largest `worker_nice`: Linux's lowest priority.
pub const MAX_NICE: u8 = 19;
