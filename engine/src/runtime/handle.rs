//! What a query service holds of a running app, and the endpoint it
//! announces.

use std::sync::Arc;
use std::sync::mpsc;

use strata_state::{At, KeyRange, Partition, RewindPlan, Version};

use super::worker::Command;
use crate::config::AppConfig;
use crate::partitioner::RouteCheck;
use crate::registry::Registry;
use crate::replay::{ReplayOutcome, ReplayProgress};
use crate::{Error, Result};

/// A table as the query service sees it: settings, type-erased codecs and
/// topics.
#[derive(Clone)]
pub struct TableMeta {
    /// The table's name.
    pub name: String,
    /// Its settings (retention, granularity).
    pub options: crate::topology::TableOptions,
    /// Its codecs, types erased (JSON in and out).
    pub codecs: crate::topology::TableCodecs,
    /// The physical input topic the table is co-partitioned with.
    pub input_topic: String,
    /// Its physical changelog topic.
    pub changelog_topic: String,
    /// The input topic's declared partitioner and what its records said
    /// of it (shared with the tasks, which record into it).
    pub route: Arc<RouteCheck>,
}

/// What the query service holds of a running app (not the app itself, so
/// the app can stop while requests are in flight): cheap to clone.
#[derive(Clone)]
pub struct AppHandle {
    /// The app's configuration.
    pub config: Arc<AppConfig>,
    /// What this instance owns, and its counters.
    pub registry: Registry,
    /// Partitions of the input topics (and of every table).
    pub partitions: u32,
    /// The app's tables, in topology order.
    pub tables: Arc<[TableMeta]>,
    pub(super) senders: Vec<mpsc::SyncSender<Command>>,
    /// Who owns which partition, for routing queries.
    pub directory: crate::directory::Directory,
}

/// The endpoint this instance publishes to the owner directory: the
/// configured one, or the address the gRPC server is bound to when that
/// names a reachable interface.
pub fn advertised_endpoint(config: &AppConfig, local: std::net::SocketAddr) -> Result<String> {
    if let Some(e) = &config.advertised_endpoint {
        return Ok(e.clone());
    }
    if local.ip().is_unspecified() {
        return Err(Error::config(
            "advertised_endpoint",
            format!(
                "grpc_listen binds every interface ({local}); set advertised_endpoint to the address other \
                 instances and clients reach this one at, such as http://10.0.0.5:{}",
                local.port()
            ),
        ));
    }
    let scheme = if config.grpc_security.server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{local}"))
}

impl AppHandle {
    /// Asks the worker owning `partition` to rewind it (or plan it, with
    /// `dry_run`), only if its latest version is `expect` when given.
    /// Blocks until the worker answers (at most the revoke timeout).
    pub fn rewind(
        &self,
        table: &str,
        partition: Partition,
        at: At,
        range: KeyRange,
        dry_run: bool,
        expect: Option<Version>,
    ) -> Result<RewindPlan> {
        let idx = self
            .tables
            .iter()
            .position(|t| t.name == table)
            .ok_or_else(|| Error::Topology(format!("no table named {table:?}")))?;
        let (tx, rx) = mpsc::channel();
        let w = partition.0 as usize % self.senders.len();
        self.senders[w]
            .send(Command::Rewind {
                table: idx,
                partition,
                at,
                range,
                dry_run,
                expect,
                reply: tx,
            })
            .map_err(|_| Error::Stopped("the worker has exited".into()))?;
        rx.recv_timeout(self.config.revoke_timeout)
            .map_err(|_| Error::Stopped("the worker did not answer the rewind".into()))?
    }

    /// Asks the worker owning `partition` to rewind every table of its task
    /// to the commit time of `at` in `table` and replay its inputs from
    /// there (or plan it, with `dry_run`), only if `table`'s latest version
    /// is `expect` when given. Blocks until the worker answers (at most
    /// the revoke timeout); the replay itself goes on in the background.
    pub fn replay(
        &self,
        table: &str,
        partition: Partition,
        at: At,
        dry_run: bool,
        expect: Option<Version>,
    ) -> Result<ReplayOutcome> {
        let idx = self.table_index(table)?;
        let (tx, rx) = mpsc::channel();
        self.send(
            partition,
            Command::Replay {
                table: idx,
                partition,
                at,
                dry_run,
                expect,
                reply: tx,
            },
        )?;
        rx.recv_timeout(self.config.revoke_timeout)
            .map_err(|_| Error::Stopped("the worker did not answer the replay".into()))?
    }

    /// Cancels the replay running in `partition`'s task: its inputs are
    /// sought forward to where they were before it started. `None` when no
    /// replay runs there.
    pub fn cancel_replay(&self, partition: Partition) -> Result<Option<ReplayProgress>> {
        let (tx, rx) = mpsc::channel();
        self.send(
            partition,
            Command::CancelReplay {
                partition,
                reply: tx,
            },
        )?;
        rx.recv_timeout(self.config.revoke_timeout)
            .map_err(|_| Error::Stopped("the worker did not answer the cancel".into()))?
    }

    fn table_index(&self, table: &str) -> Result<usize> {
        self.tables
            .iter()
            .position(|t| t.name == table)
            .ok_or_else(|| Error::Topology(format!("no table named {table:?}")))
    }

    fn send(&self, partition: Partition, cmd: Command) -> Result<()> {
        let w = partition.0 as usize % self.senders.len();
        self.senders[w]
            .send(cmd)
            .map_err(|_| Error::Stopped("the worker has exited".into()))
    }
}
