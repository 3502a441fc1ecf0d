//! The Kafka layer's one error type. librdkafka's error is kept as the
//! source of [`Error::Kafka`] (for its message and chain) but never named
//! in a public signature: callers classify by variant, not by client code.
//!
//! A write that timed out is [`Error::OutcomeUnknown`], not a failure: the
//! records may have landed, and the caller must resolve that (restore, or
//! fence) before writing again.

use std::fmt;

/// Everything that can go wrong speaking Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid configuration `{key}`: {reason}")]
    Config {
        /// The offending key.
        key: String,
        /// Why, and what to use instead.
        reason: String,
    },

    /// The client or the cluster failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },

    /// A write timed out: the records may or may not have landed.
    #[error(
        "kafka: {context}: outcome unknown (timed out after {timeout_ms} ms); resolve before writing again"
    )]
    OutcomeUnknown {
        /// What was being written.
        context: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },

    /// A topic exists with another layout than the one asked for.
    #[error("invalid topology: {0}")]
    Topology(String),

    /// A record read back (a changelog record) cannot be decoded.
    #[error("record {topic}/{partition}@{offset}: {reason}")]
    Poison {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
        /// What went wrong.
        reason: String,
    },

    /// A client was stopped, or what it serves went away.
    #[error("stopped: {0}")]
    Stopped(String),

    /// A state-store error met while reading or writing a changelog.
    #[error(transparent)]
    State(#[from] strata_state::Error),
}

/// The Kafka layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// librdkafka's error, opaque: its message and source chain only.
pub struct ClientError(Box<rdkafka::error::KafkaError>);

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

impl Error {
    /// Wraps a client error with what was being done.
    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Error {
        Error::Kafka {
            context: context.into(),
            source: ClientError(Box::new(source)),
        }
    }

    /// A configuration error.
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Whether this is a write whose outcome is unknown.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }
}
