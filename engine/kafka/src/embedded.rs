//! An in-process Kafka cluster (librdkafka's mock cluster) for demos and
//! quick experiments: no broker to install. It is not the ground truth for
//! integration tests (those run against a real broker).

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::{Error, Result};

/// An in-process Kafka cluster that lives as long as this value.
pub struct EmbeddedCluster {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap", &self.cluster.bootstrap_servers())
            .finish()
    }
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: u8) -> Result<EmbeddedCluster> {
        let cluster = MockCluster::new(brokers.max(1) as i32)
            .map_err(|e| Error::kafka("starting the embedded cluster", e))?;
        Ok(EmbeddedCluster { cluster })
    }

    /// The `host:port` list to bootstrap from.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions as i32, 1)
            .map_err(|e| Error::kafka(format!("creating topic {name} on the embedded cluster"), e))
    }
}
