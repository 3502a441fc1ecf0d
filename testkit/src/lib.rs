//! Test support for Strata.
//!
//! The main item is [`Tansu`], a throwaway Kafka-protocol broker (the Tansu
//! broker, in-memory storage) bound to a free port on `127.0.0.1`, started for a
//! test and stopped when the handle is dropped. The broker binary is installed
//! by `scripts/install-tansu.sh`; see [`Tansu::start`] for where it is looked up.
//!
//! ```no_run
//! let broker = strata_testkit::Tansu::start()?;
//! broker.create_topic("orders", 4)?;
//! let bootstrap = broker.bootstrap(); // "127.0.0.1:PORT", for bootstrap.servers
//! # drop(bootstrap);
//! # Ok::<(), strata_testkit::Error>(())
//! ```

// Test support: a failed step panics with its message, as in the tests it serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
#![warn(missing_docs)]

mod error;
mod tansu;

pub use error::{Error, Result};
pub use tansu::Tansu;
