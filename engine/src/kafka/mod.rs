//! Everything that speaks Kafka: client configuration, topic
//! administration, the changelog implemented over topics, the output
//! producer, and the consumer group driver. Nothing outside this module
//! names `rdkafka` types in a public signature.

pub mod admin;
pub mod changelog;
pub mod client;
pub mod embedded;
pub mod group;
pub mod output;
