//! The gRPC query and admin services (`strata.v1.Query`, `strata.v1.Admin`)
//! over this instance's own table partitions, with health and reflection.
//!
//! What it owns: turning requests into reads of the registry's partition
//! readers (Get, History, Scan, Diff, ListTables, DescribeTable) and into
//! rewind commands for the workers (Rewind), and the server that carries
//! them. Keys and values travel as codec bytes and as JSON through each
//! table's type-erased codecs.
//!
//! Invariants:
//! - Reads see committed versions only, through `PartitionReader`s taken
//!   from the registry on each request; a partition that is restoring or
//!   owned elsewhere answers UNAVAILABLE (or is listed as unavailable in a
//!   scatter-gather reply marked partial). Forwarding to owners comes with
//!   the owner directory.
//! - Every failure becomes a status in one function, `error::to_status`.
//! - Iterating reads run on the blocking pool with bounded work (page size,
//!   `query.max_diff_keys`); point reads run inline.
//! - Every reply stays within `query.max_message_bytes`: pages are cut to
//!   fit, and an item that cannot fit alone is RESOURCE_EXHAUSTED.
//!
//! - TLS and bearer tokens are optional (`AppConfig::grpc_security`); the
//!   token check sits in front of Query and Admin, not health and
//!   reflection (see `security`).
//!
//! Not yet: Subscribe (UNIMPLEMENTED), rewind with replay (UNIMPLEMENTED),
//! stale reads of restoring partitions, forwarding.

mod admin;
mod context;
mod convert;
mod diff;
mod error;
mod read;
mod scan;
pub(crate) mod security;
mod server;
mod service;
mod tables;
mod token;

pub(crate) use server::GrpcServer;
