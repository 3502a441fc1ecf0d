//! A running app: reads, rewinds, replays, metrics, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_state::store::RocksStore;
use strata_state::{At, KeyRange, Partition, PartitionReader, RewindPlan, Versioned};

use super::AppHandle;
use super::worker::Command;
use crate::config::AppConfig;
use crate::registry::{PartitionState, Registry};
use crate::replay::{ReplayOutcome, ReplayProgress};
use crate::{Error, Result};

/// A running app: query its tables, rewind them, read its metrics, stop it.
pub struct RunningApp {
    pub(super) config: Arc<AppConfig>,
    pub(super) registry: Registry,
    pub(super) partitions: u32,
    pub(super) tables: Vec<String>,
    pub(super) senders: Vec<mpsc::SyncSender<Command>>,
    pub(super) workers: Vec<JoinHandle<Result<()>>>,
    pub(super) poller: Option<JoinHandle<Result<()>>>,
    pub(super) stop: Arc<AtomicBool>,
    /// The owner directory's threads (stopped by `stop_all`).
    pub(super) directory: crate::directory::DirectoryService,
    /// What the query service needs of the app.
    pub(super) handle: AppHandle,
}

impl RunningApp {
    /// What a query service needs of the app: cheap to clone, and usable
    /// after the app stopped (calls then fail with [`Error::Stopped`]).
    pub fn handle(&self) -> &AppHandle {
        &self.handle
    }

    /// The configuration the app runs with.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Announces this instance in the owner directory as serving its
    /// partitions at `endpoint` (until [`RunningApp::withdraw`] or
    /// shutdown). Called once.
    pub fn announce(&mut self, endpoint: String) -> Result<()> {
        self.directory
            .publish(&self.config, self.registry.clone(), endpoint)
    }

    /// Withdraws this instance from the owner directory (a tombstone), so
    /// others stop routing here now rather than after its TTL; what is
    /// owned here is still processed and readable. Shutdown does it too.
    pub fn withdraw(&mut self) {
        self.directory.stop_publisher();
    }

    /// What this instance owns, and its counters.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Who owns each partition across all instances, and their endpoints
    /// (from the owner directory topic).
    pub fn directory(&self) -> &crate::directory::Directory {
        self.directory.directory()
    }

    /// Number of partitions of the input topics (and of every table).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `table` that holds the key whose input record key
    /// is `key`, under the partitioner declared for the table's input
    /// topic ([`AppConfig::partitioners`]). `None` when the table's keys
    /// cannot be routed by hash: the topic's partitioner is
    /// [`crate::partitioner::Partitioner::Unknown`], or its records
    /// contradicted the declared one (here or on another instance), or
    /// `table` is not a table of the app.
    pub fn partition_of(&self, table: &str, key: &[u8]) -> Option<Partition> {
        let meta = self.handle.tables.iter().find(|t| t.name == table)?;
        self.handle
            .trusted_partitioner(meta)?
            .partition(key, self.partitions)
    }

    /// Waits until this instance owns at least `min_partitions` running
    /// (restored) partitions of every table, and none is restoring. For a
    /// topology without tables it only checks that the threads are up.
    pub fn wait_running(&self, min_partitions: usize, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            self.check_threads()?;
            let parts = self.registry.partitions();
            let restoring = parts.iter().any(|(_, _, s)| *s != PartitionState::Running);
            let per_table: Vec<usize> = self
                .tables
                .iter()
                .map(|t| {
                    parts
                        .iter()
                        .filter(|(n, _, s)| n == t && *s == PartitionState::Running)
                        .count()
                })
                .collect();
            if !restoring && per_table.iter().all(|n| *n >= min_partitions) {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(Error::Stopped(format!(
                    "not running after {timeout:?}: running partitions per table {:?} (want {min_partitions} each)",
                    self.tables.iter().zip(&per_table).collect::<Vec<_>>()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails when a worker or the consumer thread has stopped (on an
    /// error: see the log).
    pub fn check_threads(&self) -> Result<()> {
        if self.workers.iter().any(|w| w.is_finished())
            || self.poller.as_ref().is_some_and(|p| p.is_finished())
        {
            return Err(Error::Stopped(
                "a worker or the consumer thread stopped; see the log".into(),
            ));
        }
        Ok(())
    }

    /// The reader of the partition of `table` holding `key` (the input
    /// record key), if the key can be routed by hash (see
    /// [`RunningApp::partition_of`]) and that partition is owned here and
    /// running.
    pub fn reader_for_key(&self, table: &str, key: &[u8]) -> Option<PartitionReader<RocksStore>> {
        self.registry.reader(table, self.partition_of(table, key)?)
    }

    /// The latest committed value of a key (table key bytes); `partition_key`
    /// is the key as the input topic's producer encoded it.
    ///
    /// Looks where [`RunningApp::partition_of`] says; when the hash cannot
    /// be trusted, or misses are confirmed (`query.confirm_misses`) and the
    /// key is not there, every partition owned here is searched. `Ok(None)`
    /// only when every partition the key could be in was searched here; a
    /// key that could be in a partition owned elsewhere is an error saying
    /// so (read it through the query service, which asks the owner).
    pub fn get(
        &self,
        table: &str,
        partition_key: &[u8],
        table_key: &[u8],
    ) -> Result<Option<Versioned>> {
        if !self.handle.tables.iter().any(|t| t.name == table) {
            return Err(Error::Stopped(format!("no table {table:?} in this app")));
        }
        let hashed = self.partition_of(table, partition_key);
        if let Some(p) = hashed {
            let r = self.registry.reader(table, p);
            if let Some(r) = &r
                && let Some(v) = r.get(table_key)?
            {
                return Ok(Some(v));
            }
            if !self.handle.config.query.confirm_misses {
                return match r {
                    Some(_) => Ok(None),
                    None => Err(Error::Stopped(format!(
                        "partition {p} of {table:?}, which holds this key, is not owned here or not running"
                    ))),
                };
            }
        }
        let mut elsewhere = Vec::new();
        for q in (0..self.partitions).map(Partition) {
            match self.registry.reader(table, q) {
                // The hashed partition, read above.
                Some(_) if Some(q) == hashed => {}
                Some(r) => {
                    if let Some(v) = r.get(table_key)? {
                        return Ok(Some(v));
                    }
                }
                None => elsewhere.push(q.0),
            }
        }
        if elsewhere.is_empty() {
            return Ok(None);
        }
        Err(Error::Stopped(format!(
            "the key is in no partition of {table:?} owned here, and its partition cannot be vouched for \
             (partitions {elsewhere:?} are owned elsewhere or not running): read it through the query service"
        )))
    }

    /// Rewinds (or, with `dry_run`, plans rewinding) one partition of a
    /// table, online: the owner commits what it has, stages the rewind as
    /// new versions flagged as such, and commits them.
    pub fn rewind(
        &self,
        table: &str,
        partition: Partition,
        at: At,
        range: KeyRange,
        dry_run: bool,
    ) -> Result<RewindPlan> {
        self.handle
            .rewind(table, partition, at, range, dry_run, None)
    }

    /// Rewinds every table of `partition`'s task to the commit time of `at`
    /// in `table`, seeks its inputs back to where they stood then, and
    /// reprocesses from there with the code now running, flagging what it
    /// produces as replayed (or, with `dry_run`, plans it). Returns once the
    /// replay has started; its progress is in [`Registry::replay`]. See
    /// `docs/commit-protocol.md` §7.
    pub fn replay(
        &self,
        table: &str,
        partition: Partition,
        at: At,
        dry_run: bool,
    ) -> Result<ReplayOutcome> {
        self.handle.replay(table, partition, at, dry_run, None)
    }

    /// Cancels the replay running in `partition`'s task (see
    /// [`RunningApp::replay`]); `None` when none runs.
    pub fn cancel_replay(&self, partition: Partition) -> Result<Option<ReplayProgress>> {
        self.handle.cancel_replay(partition)
    }

    /// Commits everything, leaves the group and stops the threads.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all()
    }

    /// [`RunningApp::shutdown`] for a composer that holds the app: stops
    /// it in place; later calls (and the drop) do nothing.
    pub fn stop(&mut self) -> Result<()> {
        if self.workers.is_empty() && self.poller.is_none() {
            return Ok(());
        }
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        // Withdraw from the owner directory first (a tombstone), so others
        // stop routing here now rather than after its TTL, and keep
        // serving what is still owned here while they notice.
        self.directory.stop_publisher();
        let mut first_err = None;
        for s in &self.senders {
            let (tx, rx) = mpsc::channel();
            if s.send(Command::Shutdown { ack: tx }).is_ok() {
                let _ = rx.recv_timeout(self.config.revoke_timeout);
            }
        }
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => {
                    first_err = first_err.or(Some(Error::Stopped("a worker panicked".into())))
                }
                Ok(Ok(())) => {}
            }
        }
        self.stop.store(true, Ordering::Release);
        if let Some(p) = self.poller.take() {
            match p.join() {
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => {
                    first_err =
                        first_err.or(Some(Error::Stopped("the consumer thread panicked".into())))
                }
                Ok(Ok(())) => {}
            }
        }
        self.directory.stop();
        tracing::info!(app = %self.config.application_id, "stopped");
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Runs until `shutdown` resolves (e.g. `tokio::signal::ctrl_c()`), or
    /// a fatal error stops a thread; then shuts down gracefully.
    pub async fn run_until<F: std::future::Future>(mut self, shutdown: F) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if self.check_threads().is_err() {
                        break;
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || self.stop_all())
            .await
            .map_err(|e| Error::Stopped(format!("shutdown task failed: {e}")))?
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if (!self.workers.is_empty() || self.poller.is_some())
            && let Err(e) = self.stop_all()
        {
            tracing::error!(error = %e, "error while stopping the app");
        }
    }
}
