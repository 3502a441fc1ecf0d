//! The app's typed configuration, validated once at build time with errors
//! that name the offending key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use strata_state::store::rocks::RocksConfig;

use crate::kafka::client::KafkaConfig;
use crate::{Error, Result};

/// What a commit promises.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Guarantee {
    /// Every input record's effects survive a crash; after one, records
    /// since the last commit are processed again (their effects may apply
    /// twice).
    #[default]
    AtLeastOnce,
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
    /// Outputs buffered by a task before it commits early.
    pub max_buffered_outputs: usize,
    /// Records a worker takes from one partition before moving to the next.
    pub poll_batch: usize,
    /// Logical topic name -> physical name. Unmapped names are physical.
    pub topics: BTreeMap<String, String>,
    /// Start position of a new group.
    pub start_position: StartPosition,
    /// Storage settings shared by all table partitions.
    pub rocks: RocksConfig,
    /// Changelog records applied per restore batch.
    pub restore_batch: usize,
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
}

impl AppConfig {
    /// Defaults for `application_id` against `bootstrap_servers`.
    pub fn new(application_id: impl Into<String>, bootstrap_servers: impl Into<String>) -> AppConfig {
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
            max_buffered_outputs: 10_000,
            poll_batch: 500,
            topics: BTreeMap::new(),
            start_position: StartPosition::Earliest,
            rocks: RocksConfig::default(),
            restore_batch: 10_000,
            revoke_timeout: Duration::from_secs(60),
            manage_topics: true,
            instance_id: None,
        }
    }

    /// The physical name of a logical topic: mapped by `topics`;
    /// repartition topics are `<application id>-<name>-repartition`.
    pub fn physical(&self, logical: &str) -> String {
        if let Some(name) = logical.strip_prefix(crate::topology::REPARTITION_PREFIX) {
            return format!("{}-{name}-repartition", self.application_id);
        }
        self.topics.get(logical).cloned().unwrap_or_else(|| logical.to_string())
    }

    /// The changelog topic of a table.
    pub fn changelog_topic(&self, table: &str) -> String {
        format!("{}-{}-changelog", self.application_id, table)
    }

    /// The default dead-letter topic.
    pub fn dlq_topic(&self) -> String {
        format!("{}-dlq", self.application_id)
    }

    /// Checks every setting, naming the offending key.
    pub fn validate(&self) -> Result<()> {
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.application_id.is_empty() || self.application_id.len() > 100 || !self.application_id.chars().all(id_ok) {
            return Err(Error::config("application_id", format!("{:?}: use 1-100 characters of [A-Za-z0-9._-]", self.application_id)));
        }
        self.kafka.validate()?;
        if self.commit_interval.is_zero() {
            return Err(Error::config("commit_interval", "must be positive"));
        }
        if self.worker_threads == 0 || self.worker_threads > 1024 {
            return Err(Error::config("worker_threads", "must be between 1 and 1024"));
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
        for (l, p) in &self.topics {
            if p.is_empty() {
                return Err(Error::config(format!("topics.{l}"), "maps to an empty topic name"));
            }
        }
        self.rocks.validate()?;
        Ok(())
    }
}
