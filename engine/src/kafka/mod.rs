//! Everything that speaks Kafka: client configuration, topic
//! administration, the changelog implemented over topics, the output
//! producer, the embedded broker, and the consumer group driver. No
//! `rdkafka` type appears in a public signature.

pub mod admin;
pub mod changelog;
pub mod client;
pub mod embedded;
pub mod group;
pub mod output;
pub mod txn;
