//! The gRPC query and admin services (`strata.v1.Query`, `strata.v1.Admin`)
//! over this instance's own table partitions, with health and reflection:
//! the only crate that names tonic. It depends on the engine
//! (`strata_engine::AppHandle`), never the other way; the `strata` facade
//! starts it on a running app.
//!
//! What it owns: turning requests into reads of the registry's partition
//! readers (Get, History, Scan, Diff, ListTables, DescribeTable) and into
//! rewind commands for the workers (Rewind), and the server that carries
//! them. Keys and values travel as codec bytes and as JSON through each
//! table's type-erased codecs.
//!
//! Invariants:
//! - Reads see committed versions only, through `PartitionReader`s taken
//!   from the registry on each request. A partition owned elsewhere is
//!   read on its owner (`route`: forwarded with a hop limit and the
//!   caller's deadline); a restoring one answers UNAVAILABLE unless the
//!   caller accepts a stale read; reads over every partition gather pages
//!   from each owner (`gather`) and report the partitions they could not
//!   read (the reply is then marked partial).
//! - Every failure becomes a status in one function, `error::to_status`.
//! - Iterating reads run on the blocking pool with bounded work (page size,
//!   `query.max_diff_keys`); point reads run inline.
//! - Every reply stays within `query.max_message_bytes`: pages are cut to
//!   fit, and an item that cannot fit alone is RESOURCE_EXHAUSTED.
//! - TLS and bearer tokens are optional (`AppConfig::grpc_security`); the
//!   token check sits in front of Query and Admin, not health and
//!   reflection (see `security`).
//! - Admin.Rewind with `replay` and Admin.CancelReplay run on the
//!   partition's worker, like rewinds (docs/commit-protocol.md §7).

mod admin;
mod context;
mod convert;
mod diff;
mod error;
mod forward;
mod gather;
mod page;
mod peers;
mod read;
mod route;
mod scan;
mod security;
mod server;
mod service;
mod subscribe;
mod tables;
mod token;

pub use security::check_tls;
pub use server::GrpcServer;
