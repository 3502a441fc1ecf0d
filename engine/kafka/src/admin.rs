//! Topic administration: making sure the topics a topology needs exist with
//! the partition counts and settings it expects.
//!
//! [`KafkaAdmin::ensure_topic`] creates a missing topic and checks an
//! existing one: a different partition count is an error (co-partitioning
//! and changelog-to-table-partition mapping depend on it), and a changelog
//! topic found compacted is an error (compaction deletes history the table
//! promises). Other setting differences are logged, not fatal.
//!
//! Tansu (0.6) creates topics with any settings (it accepts unknown keys
//! too), keeps the ones given at creation, and describes only those; a
//! metadata request for a missing topic does not create it.
//!
//! The calls block the calling thread (bounded by
//! [`KafkaConfig::request_timeout`]); call them from a blocking thread, not
//! from async code.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::client::{KafkaConfig, TracingContext, create};
use crate::error::{Error, Result};

/// How often topic metadata is re-read while waiting for a new topic to
/// show all its partitions.
const METADATA_POLL: Duration = Duration::from_millis(50);

/// The replication factor of a topic to create.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Replication {
    /// The broker's `default.replication.factor`.
    #[default]
    BrokerDefault,
    /// A fixed number of replicas.
    Factor(NonZeroU16),
}

/// A topic the engine needs: its name, partition count, replication and
/// topic-level settings (applied when the topic is created).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Its number of partitions.
    pub partitions: u32,
    /// Its replication factor.
    pub replication: Replication,
    /// Topic-level settings (`cleanup.policy`, `retention.ms`, …).
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with the broker's default settings.
    pub fn new(name: impl Into<String>, partitions: u32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: Replication::default(),
            configs: BTreeMap::new(),
        }
    }

    /// A table's changelog topic: one partition per table partition, never
    /// compacted (`cleanup.policy=delete`: every record of a key is a
    /// version of its history) and kept forever (`retention.ms=-1`) unless
    /// a retention is set with [`TopicSpec::config`].
    pub fn changelog(name: impl Into<String>, partitions: u32) -> TopicSpec {
        TopicSpec::new(name, partitions)
            .config("cleanup.policy", "delete")
            .config("retention.ms", "-1")
    }

    /// Sets a topic-level setting.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> TopicSpec {
        self.configs.insert(key.into(), value.into());
        self
    }

    /// Sets the replication factor.
    pub fn replication(mut self, replication: Replication) -> TopicSpec {
        self.replication = replication;
        self
    }

    fn validate(&self) -> Result<()> {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.name.is_empty()
            || self.name.len() > 249
            || self.name == "."
            || self.name == ".."
            || !self.name.chars().all(legal)
        {
            return Err(Error::config(
                "topic",
                format!(
                    "{:?} is not a legal topic name: use 1-249 characters of [A-Za-z0-9._-]",
                    self.name
                ),
            ));
        }
        if self.partitions == 0 || i32::try_from(self.partitions).is_err() {
            return Err(Error::config(
                format!("topic.{}.partitions", self.name),
                format!(
                    "{} is not a valid partition count (1..={})",
                    self.partitions,
                    i32::MAX
                ),
            ));
        }
        Ok(())
    }
}

/// What [`KafkaAdmin::ensure_topic`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopicStatus {
    /// The topic was missing and has been created.
    Created,
    /// The topic already existed with the expected partition count.
    Existed,
}

/// Creates and inspects topics.
pub struct KafkaAdmin {
    client: AdminClient<TracingContext>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAdmin")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaAdmin {
    /// An admin client for the cluster `config` names.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration; [`Error::Kafka`] if
    /// librdkafka cannot create the client.
    pub fn new(config: &KafkaConfig) -> Result<KafkaAdmin> {
        let client = create(&config.admin()?, TracingContext, "admin client")?;
        Ok(KafkaAdmin {
            client,
            timeout: config.request_timeout,
        })
    }

    /// Makes sure each topic exists as specified; see
    /// [`KafkaAdmin::ensure_topic`]. Stops at the first failure.
    pub fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<Vec<TopicStatus>> {
        specs.iter().map(|s| self.ensure_topic(s)).collect()
    }

    /// Makes sure `spec.name` exists with `spec.partitions` partitions,
    /// creating it (with `spec.configs`) if it is missing and waiting until
    /// its metadata shows every partition.
    ///
    /// # Errors
    /// [`Error::Topology`] if the topic exists with a different partition
    /// count (naming the topic and both counts), or is compacted while
    /// `spec` asks for `cleanup.policy=delete`; [`Error::Config`] for an
    /// illegal name or count; [`Error::Kafka`] if the broker refuses;
    /// [`Error::OutcomeUnknown`] if the creation was not answered in time.
    pub fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicStatus> {
        spec.validate()?;
        if let Some(actual) = self.partition_count(&spec.name)? {
            self.check_existing(spec, actual)?;
            return Ok(TopicStatus::Existed);
        }
        match self.create(spec)? {
            Created::Yes => {
                self.await_partitions(spec)?;
                tracing::info!(topic = %spec.name, partitions = spec.partitions, configs = ?spec.configs, "created topic");
                Ok(TopicStatus::Created)
            }
            Created::Raced => {
                // Someone else created it between our check and our create.
                let actual = self.await_partitions(spec)?;
                self.check_existing(spec, actual)?;
                Ok(TopicStatus::Existed)
            }
        }
    }

    /// The number of partitions of `topic`, or `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Kafka`] if the metadata cannot be read within the request
    /// timeout, or the broker reports an error other than "unknown topic".
    pub fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        let md = self
            .client
            .inner()
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| Error::kafka(format!("reading metadata of topic {topic}"), e))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                return Ok(None);
            }
            Some(code) => {
                return Err(Error::kafka(
                    format!("reading metadata of topic {topic}"),
                    KafkaError::MetadataFetch(code),
                ));
            }
        }
        // A broker may list a topic it is still creating with no partitions.
        if t.partitions().is_empty() {
            return Ok(None);
        }
        Ok(Some(t.partitions().len() as u32))
    }

    /// The topic-level settings of `topic` as the broker reports them, or
    /// `None` if the broker does not describe them.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] if the broker does not answer in time;
    /// [`Error::Kafka`] if the request cannot be sent.
    pub fn topic_configs(&self, topic: &str) -> Result<Option<BTreeMap<String, String>>> {
        let spec = [ResourceSpecifier::Topic(topic)];
        let opts = self.options();
        let context = format!("describing the settings of topic {topic}");
        let results = self.wait(self.client.describe_configs(&spec, &opts), &context)?;
        let results = results.map_err(|e| Error::kafka(&context, e))?;
        match results.into_iter().next() {
            Some(Ok(resource)) => Ok(Some(
                resource
                    .entries
                    .into_iter()
                    .filter_map(|e| e.value.map(|v| (e.name, v)))
                    .collect(),
            )),
            Some(Err(code)) => {
                tracing::debug!(topic, error = %code, "broker did not describe topic settings");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Checks an existing topic against `spec`.
    fn check_existing(&self, spec: &TopicSpec, actual: u32) -> Result<()> {
        if actual != spec.partitions {
            return Err(Error::Topology(format!(
                "topic {} exists with {actual} partitions but {} are expected; \
                 a topic's partition count cannot be changed safely: recreate the topic \
                 or change the topology's partition count",
                spec.name, spec.partitions
            )));
        }
        if spec.configs.is_empty() {
            return Ok(());
        }
        let Some(found) = self.topic_configs(&spec.name)? else {
            tracing::warn!(topic = %spec.name, "cannot check the settings of an existing topic: the broker did not describe them");
            return Ok(());
        };
        for (key, want) in &spec.configs {
            let have = found.get(key);
            if have == Some(want) {
                continue;
            }
            if key == "cleanup.policy"
                && want == "delete"
                && have.is_some_and(|h| h.contains("compact"))
            {
                return Err(Error::Topology(format!(
                    "topic {} has cleanup.policy={} but must not be compacted: compaction deletes \
                     versions the table's history keeps; set cleanup.policy=delete on it",
                    spec.name,
                    have.map(String::as_str).unwrap_or_default()
                )));
            }
            tracing::warn!(topic = %spec.name, key = %key, expected = %want, actual = ?have, "existing topic has a different setting");
        }
        Ok(())
    }

    /// Sends a CreateTopics request for `spec`.
    fn create(&self, spec: &TopicSpec) -> Result<Created> {
        let replication = match spec.replication {
            Replication::BrokerDefault => -1,
            Replication::Factor(n) => i32::from(n.get()),
        };
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions as i32,
            TopicReplication::Fixed(replication),
        );
        for (k, v) in &spec.configs {
            topic = topic.set(k, v);
        }
        let context = format!(
            "creating topic {} with {} partitions",
            spec.name, spec.partitions
        );
        let results = self.wait(
            self.client.create_topics([&topic], &self.options()),
            &context,
        )?;
        let results = results.map_err(|e| Error::kafka(&context, e))?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(Created::Yes),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Created::Raced),
            Some(Err((_, code))) => Err(Error::kafka(
                format!("{context} (settings {:?})", spec.configs),
                KafkaError::AdminOp(code),
            )),
            None => Err(Error::kafka(
                context,
                KafkaError::AdminOpCreation("the broker answered with no result".into()),
            )),
        }
    }

    /// Waits (up to the request timeout) until the topic's metadata shows
    /// partitions; returns how many.
    fn await_partitions(&self, spec: &TopicSpec) -> Result<u32> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let seen = self.partition_count(&spec.name)?;
            match seen {
                Some(n) if n >= spec.partitions => return Ok(n),
                _ if Instant::now() >= deadline => {
                    return Err(Error::OutcomeUnknown {
                        context: format!(
                            "topic {} was created but its metadata shows {seen:?} of {} partitions",
                            spec.name, spec.partitions
                        ),
                        timeout_ms: self.timeout.as_millis() as u64,
                    });
                }
                _ => std::thread::sleep(METADATA_POLL),
            }
        }
    }

    /// Admin request options: librdkafka answers every request within the
    /// request timeout.
    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Blocks on an admin future. librdkafka resolves it within the request
    /// timeout; the extra bound only guards against a lost answer.
    fn wait<F: Future>(&self, fut: F, context: &str) -> Result<F::Output> {
        let bound = self.timeout * 2 + Duration::from_secs(1);
        block_on_until(fut, bound).ok_or_else(|| Error::OutcomeUnknown {
            context: context.to_string(),
            timeout_ms: bound.as_millis() as u64,
        })
    }
}

/// The outcome of a CreateTopics request.
enum Created {
    Yes,
    Raced,
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` on this thread until it completes or `timeout` passes
/// (`None`). Works inside or outside a tokio runtime (it never enters one),
/// but blocks the thread.
fn block_on_until<F: Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_until_returns_ready_values_and_times_out_on_pending() {
        assert_eq!(
            block_on_until(async { 7 }, Duration::from_millis(10)),
            Some(7)
        );
        let started = Instant::now();
        assert_eq!(
            block_on_until(std::future::pending::<()>(), Duration::from_millis(30)),
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn specs_are_validated() {
        assert!(TopicSpec::new("ok.topic-1_x", 3).validate().is_ok());
        assert!(matches!(
            TopicSpec::new("", 3).validate(),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            TopicSpec::new("a b", 3).validate(),
            Err(Error::Config { .. })
        ));
        match TopicSpec::new("t", 0).validate() {
            Err(Error::Config { key, .. }) => assert_eq!(key, "topic.t.partitions"),
            other => panic!("{other:?}"),
        }
        let c = TopicSpec::changelog("t", 2);
        assert_eq!(
            c.configs.get("cleanup.policy").map(String::as_str),
            Some("delete")
        );
        assert_eq!(
            c.configs.get("retention.ms").map(String::as_str),
            Some("-1")
        );
    }
}
