//! An in-process Kafka cluster (librdkafka's mock cluster) for demos and
//! quick experiments: no broker to install. It is not the ground truth for
//! integration tests (those run against a real broker).

use strata_kafka::embedded::EmbeddedCluster;

use crate::Result;
use crate::config::{AppConfig, Guarantee};
use crate::topology::Topology;

/// An in-process Kafka cluster that lives as long as this value.
#[derive(Debug)]
pub struct EmbeddedKafka {
    cluster: EmbeddedCluster,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: u8) -> Result<EmbeddedKafka> {
        Ok(EmbeddedKafka {
            cluster: EmbeddedCluster::start(brokers)?,
        })
    }

    /// The `host:port` list to bootstrap from.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates the internal topics an app would create for `topology`
    /// (changelogs, outputs, dead letters), with `partitions` partitions,
    /// and the owner directory topic, with one:
    /// the mock cluster does not serve the admin API's CreateTopics or
    /// DescribeConfigs, so run the app with `manage_topics` off.
    pub fn create_app_topics(
        &self,
        config: &AppConfig,
        topology: &Topology,
        partitions: u32,
    ) -> Result<()> {
        for t in topology.table_names() {
            self.create_topic(&config.changelog_topic(&t), partitions)?;
        }
        for t in topology
            .output_topics()
            .into_iter()
            .chain([config.dlq_topic()])
        {
            self.create_topic(&config.physical(&t), partitions)?;
        }
        if config.guarantee == Guarantee::ExactlyOnce {
            self.create_topic(&config.transactions_topic(), partitions)?;
        }
        // The mock cluster cannot set cleanup.policy; a directory topic
        // without compaction still works, it only grows.
        self.create_topic(&config.directory_topic(), 1)?;
        Ok(())
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        Ok(self.cluster.create_topic(name, partitions)?)
    }
}
