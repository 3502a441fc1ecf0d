//! The engine's one error type.
//!
//! A write to Kafka that timed out is [`Error::OutcomeUnknown`], not a
//! failure: the records may have landed, and the caller must resolve that
//! (restore, or fence) before writing again.

/// Everything that can go wrong in the engine.
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

    /// The topology is inconsistent (e.g. co-partitioning mismatch).
    #[error("invalid topology: {0}")]
    Topology(String),

    /// Kafka failed (the client or the cluster; see [`strata_kafka::Error`]).
    #[error(transparent)]
    Kafka(strata_kafka::Error),

    /// A write to Kafka timed out: the records may or may not have landed.
    #[error(
        "kafka: {context}: outcome unknown (timed out after {timeout_ms} ms); resolve before writing again"
    )]
    OutcomeUnknown {
        /// What was being written.
        context: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },

    /// A state store failed.
    #[error(transparent)]
    State(#[from] strata_state::Error),

    /// A record could not be decoded or processed.
    #[error("record {topic}/{partition}@{offset}: {reason}")]
    Poison {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
        /// What went wrong.
        reason: String,
    },

    /// An operation cannot run in the current state (a replay whose input
    /// positions cannot be placed, a second replay while one runs); the
    /// message says why and what to do. Nothing was changed.
    #[error("{0}")]
    Precondition(String),

    /// An input offset an operation needs is no longer in the input topic
    /// (deleted by retention). Nothing was changed.
    #[error(
        "input topic {topic:?} partition {partition} no longer holds offset {offset} (the earliest retained is \
         {earliest}): the replay cannot start there; pick a later target"
    )]
    InputNotRetained {
        /// The input topic.
        topic: String,
        /// Its partition.
        partition: u32,
        /// The offset needed.
        offset: u64,
        /// The earliest offset the topic still holds.
        earliest: u64,
    },

    /// The engine is shutting down or a component has stopped.
    #[error("engine stopped: {0}")]
    Stopped(String),

    /// An I/O failure (state directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A configuration error.
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The Kafka layer's errors, with the kinds the engine tells apart (a
/// configuration error, an unknown outcome, a store error, a bad record,
/// a topic layout) mapped to the engine's own variants.
impl From<strata_kafka::Error> for Error {
    fn from(e: strata_kafka::Error) -> Error {
        use strata_kafka::Error as K;
        match e {
            K::Config { key, reason } => Error::Config { key, reason },
            K::OutcomeUnknown {
                context,
                timeout_ms,
            } => Error::OutcomeUnknown {
                context,
                timeout_ms,
            },
            K::State(e) => Error::State(e),
            K::Topology(t) => Error::Topology(t),
            K::Poison {
                topic,
                partition,
                offset,
                reason,
            } => Error::Poison {
                topic,
                partition,
                offset,
                reason,
            },
            K::Stopped(s) => Error::Stopped(s),
            e => Error::Kafka(e),
        }
    }
}

impl From<strata_state::InvalidTableName> for Error {
    fn from(e: strata_state::InvalidTableName) -> Error {
        Error::State(e.into())
    }
}
