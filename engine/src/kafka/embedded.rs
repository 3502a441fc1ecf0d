//! An in-process Kafka cluster (librdkafka's mock cluster) for demos and
//! quick experiments: no broker to install. It is not the ground truth for
//! integration tests (those run against a real broker).

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::{Error, Result};

/// An in-process Kafka cluster that lives as long as this value.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap", &self.cluster.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: u8) -> Result<EmbeddedKafka> {
        let cluster = MockCluster::new(brokers.max(1) as i32)
            .map_err(|e| Error::kafka("starting the embedded cluster", e))?;
        Ok(EmbeddedKafka { cluster })
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
        config: &crate::AppConfig,
        topology: &crate::Topology,
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
        if config.guarantee == crate::Guarantee::ExactlyOnce {
            self.create_topic(&config.transactions_topic(), partitions)?;
        }
        // The mock cluster cannot set cleanup.policy; a directory topic
        // without compaction still works, it only grows.
        self.create_topic(&config.directory_topic(), 1)?;
        Ok(())
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions as i32, 1)
            .map_err(|e| Error::kafka(format!("creating topic {name} on the embedded cluster"), e))
    }
}
