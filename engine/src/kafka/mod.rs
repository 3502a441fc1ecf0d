//! Everything that speaks Kafka: client configuration, topic
//! administration, and the changelog implemented over topics. Nothing
//! outside this module names `rdkafka` types in a public signature.

pub mod admin;
pub mod changelog;
pub mod client;
