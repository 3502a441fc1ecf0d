//! The crate's single error type.
//!
//! Every failure of the test kit is one variant of [`Error`]; messages are
//! written to be read in a failing test's output, so the broker-related ones
//! carry the tail of the broker's log or the failing command's output.

use std::process::ExitStatus;
use std::time::Duration;

/// What can go wrong while running a test broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tansu binary is not installed where it was looked for.
    #[error(
        "tansu binary not found ({looked}): run `scripts/install-tansu.sh` \
         (or `scripts/test.sh`, which installs it)"
    )]
    BinaryNotFound {
        /// Where the binary was looked for, and why there.
        looked: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The broker process exited before it accepted connections.
    #[error(
        "tansu broker exited ({status}) before accepting connections on {addr}; log tail:\n{log_tail}"
    )]
    BrokerExited {
        /// The address the broker was asked to listen on.
        addr: String,
        /// How the process ended.
        status: ExitStatus,
        /// The last lines of the broker's stdout and stderr.
        log_tail: String,
    },

    /// The broker did not accept connections in time.
    #[error(
        "tansu broker did not accept connections on {addr} within {waited:?}; log tail:\n{log_tail}"
    )]
    StartTimeout {
        /// The address the broker was asked to listen on.
        addr: String,
        /// How long we waited.
        waited: Duration,
        /// The last lines of the broker's stdout and stderr.
        log_tail: String,
    },

    /// A tansu CLI command exited unsuccessfully.
    ///
    /// Note that tansu writes its error messages to stdout, so `output` holds
    /// stdout followed by stderr.
    #[error("`{command}` failed ({status}); output:\n{output}")]
    CommandFailed {
        /// The command line that was run.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its stdout followed by its stderr.
        output: String,
    },

    /// A tansu CLI command did not finish in time and was killed.
    #[error("`{command}` did not finish within {waited:?} and was killed; output:\n{output}")]
    CommandTimeout {
        /// The command line that was run.
        command: String,
        /// How long we waited.
        waited: Duration,
        /// Its stdout followed by its stderr, as far as it got.
        output: String,
    },

    /// An argument was rejected before reaching the broker.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
