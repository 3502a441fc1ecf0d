//! Running a topology against Kafka: startup checks and topic creation,
//! the consumer-group thread, the worker threads, and graceful shutdown.

mod dispatch;
pub mod keyroute;
mod priority;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_state::store::{RocksEnv, RocksStore};
use strata_state::{At, KeyRange, Partition, PartitionReader, RewindPlan, Version, Versioned};

use crate::config::{AppConfig, StartPosition};
use crate::partitioner::RouteCheck;
use crate::registry::{PartitionState, Registry};
use crate::replay::{ReplayOutcome, ReplayProgress};

use crate::topology::Topology;
use crate::{Error, Result};
use strata_kafka::admin::{KafkaAdmin, TopicSpec};
use strata_kafka::group::{Group, GroupOptions, PollEnd};
use strata_kafka::output::OutputProducer;
use strata_kafka::producer::AckedProducer;

use worker::{Command, WorkerEnv};

/// Bound of each worker's command queue.
const COMMAND_QUEUE: usize = 1024;

/// An app: configuration checked, ready to run topologies.
#[derive(Clone, Debug)]
pub struct App {
    config: Arc<AppConfig>,
}

impl App {
    /// Validates the configuration.
    pub fn new(config: AppConfig) -> Result<App> {
        config.validate()?;
        Ok(App {
            config: Arc::new(config),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Checks the topology against the cluster (input topics exist and are
    /// co-partitioned), creates changelog, output and dead-letter topics,
    /// joins the consumer group, follows the owner directory and starts
    /// processing on background threads. Announces nothing and serves no
    /// queries: a composer (the `strata` facade) starts its query server
    /// on [`RunningApp::handle`] and then calls [`RunningApp::announce`].
    pub fn launch(&self, topology: Topology) -> Result<RunningApp> {
        topology.validate()?;
        let inputs = topology.source_topics();
        for (logical, declared) in &self.config.partitioners {
            if !inputs.contains(logical) {
                return Err(Error::config(
                    format!("partitioners[{logical:?}]"),
                    format!(
                        "{logical:?} is not an input topic of the topology (its input topics: {inputs:?})"
                    ),
                ));
            }
            tracing::debug!(topic = %logical, partitioner = declared.name(), "declared partitioner");
        }
        let config = self.config.clone();
        let admin = KafkaAdmin::new(&config.kafka)?;
        // Input topics: must exist, with one partition count.
        let mut partitions = None;
        let internal = topology.internal_topics();
        for logical in topology
            .source_topics()
            .into_iter()
            .filter(|t| !internal.contains(t))
        {
            let physical = config.physical(&logical);
            let n = admin.partition_count(&physical)?.ok_or_else(|| {
                Error::Topology(format!(
                    "input topic {physical:?} does not exist; create it first"
                ))
            })?;
            match partitions {
                None => partitions = Some((physical, n)),
                Some((ref t, m)) if m != n => {
                    return Err(Error::Topology(format!(
                        "input topics are not co-partitioned: {t:?} has {m} partitions but {physical:?} has {n}"
                    )));
                }
                _ => {}
            }
        }
        let (_, n) = partitions.ok_or_else(|| Error::Topology("no input topic".into()))?;
        let mut specs: Vec<TopicSpec> = topology
            .table_names()
            .iter()
            .map(|t| TopicSpec::changelog(config.changelog_topic(t), n))
            .collect();
        for logical in topology
            .output_topics()
            .into_iter()
            .chain([config.dlq_topic()])
        {
            specs.push(TopicSpec::new(config.physical(&logical), n));
        }
        if config.guarantee == crate::Guarantee::ExactlyOnce {
            // Holds no records: its group offsets mark each task's last
            // committed transaction.
            specs.push(TopicSpec::new(config.transactions_topic(), n));
        }
        if config.manage_topics {
            admin.ensure_topics(&specs)?;
        } else {
            for s in &specs {
                match admin.partition_count(&s.name)? {
                    Some(m) if m == n => {}
                    Some(m) => {
                        return Err(Error::Topology(format!(
                            "topic {:?} has {m} partitions; it must have {n}, like the input",
                            s.name
                        )));
                    }
                    None => {
                        return Err(Error::Topology(format!(
                            "topic {:?} does not exist (manage_topics is off): create it with {n} partitions",
                            s.name
                        )));
                    }
                }
            }
        }

        crate::directory::ensure_topic(&admin, &config)?;

        let compiled = topology.compile(|t| config.physical(t))?;
        let mut routes: BTreeMap<String, Arc<RouteCheck>> = BTreeMap::new();
        let route_of = |physical: &str, logical: &str| {
            Arc::new(RouteCheck::new(
                physical.to_string(),
                config.partitioner(logical),
                n,
            ))
        };
        for logical in topology.source_topics() {
            let physical = config.physical(&logical);
            let check = route_of(&physical, &logical);
            routes.entry(physical).or_insert(check);
        }
        let sources = compiled.task_sources(|topic| routes.get(topic).cloned());
        let tables = compiled.table_options();
        let table_meta: Vec<TableMeta> = compiled
            .tables
            .iter()
            .map(|t| TableMeta {
                name: t.name.clone(),
                options: t.options.clone(),
                codecs: t.codecs.clone(),
                input_topic: t.input_topic.clone(),
                changelog_topic: config.changelog_topic(&t.name),
                // Every table follows a source topic, which has a check.
                route: routes
                    .get(&t.input_topic)
                    .cloned()
                    .unwrap_or_else(|| route_of(&t.input_topic, &t.topic)),
            })
            .collect();
        let timers = compiled.timers.clone();
        let emitters = compiled.emitters();

        let mut topic_map = config.topics.clone();
        for logical in topology
            .output_topics()
            .into_iter()
            .chain([config.dlq_topic()])
        {
            topic_map.insert(logical.clone(), config.physical(&logical));
        }
        let outputs = Arc::new(OutputProducer::new(&config.kafka, topic_map)?);
        let changelog = AckedProducer::new(&config.kafka)?;
        let rocks = RocksEnv::new(config.rocks.clone())?;
        let registry = Registry::default();
        registry.set_route_checks(routes);
        let directory = crate::directory::DirectoryService::follow(&config)?;

        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.worker_threads {
            let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
            senders.push(tx);
            receivers.push(rx);
        }
        let dispatch = Arc::new(dispatch::Dispatch {
            registry: registry.clone(),
            workers: senders.clone(),
            revoke_timeout: config.revoke_timeout,
        });
        let topics: Vec<String> = compiled.sources.keys().cloned().collect();
        let group = Group::join(
            &config.kafka,
            &GroupOptions {
                group_id: config.application_id.clone(),
                start_earliest: config.start_position == StartPosition::Earliest,
                co_partitioned: topology.source_topics().len() > 1,
                instance_id: config.instance_id.clone(),
            },
            &topics,
            dispatch.clone(),
        )?;

        let env = Arc::new(WorkerEnv {
            config: config.clone(),
            sources,
            tables: tables.clone(),
            rocks,
            changelog,
            outputs,
            group: group.clone(),
            registry: registry.clone(),
            dlq: Arc::from(config.dlq_topic().as_str()),
            timers,
            emitters,
            repartition: compiled.internal.clone(),
            // Under at-least-once, changelogs written under exactly-once
            // before a switch still need their last transactions resolved
            // by the committed markers, if the app ever ran exactly-once.
            read_markers: config.guarantee == crate::Guarantee::ExactlyOnce
                || admin
                    .partition_count(&config.transactions_topic())
                    .ok()
                    .flatten()
                    .is_some(),
        });
        let mut workers = Vec::new();
        let failed = Arc::new(AtomicBool::new(false));
        for (i, rx) in receivers.into_iter().enumerate() {
            let env = env.clone();
            let failed = failed.clone();
            let nice = config.worker_nice;
            let h = std::thread::Builder::new()
                .name(format!("strata-worker-{i}"))
                .spawn(move || {
                    priority::lower_this_thread(nice);
                    let r = worker::run(i, env, rx);
                    if let Err(e) = &r {
                        tracing::error!(worker = i, error = %e, "worker stopped on an error; the instance leaves its group");
                        failed.store(true, Ordering::Release);
                    }
                    r
                })
                .map_err(|e| Error::Io { context: "spawning a worker thread".into(), source: e })?;
            workers.push(h);
        }
        drop(env);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("strata-consumer".into())
                .spawn(move || {
                    match group.poll_until(&stop, || failed.load(Ordering::Acquire))? {
                        PollEnd::Stopped => Ok(()),
                        PollEnd::Halted => {
                            // A worker died: stop the others so this
                            // instance leaves the group and its partitions
                            // move to healthy instances.
                            dispatch.shutdown_workers();
                            Err(Error::Stopped(
                                "a worker failed; the instance left its group".into(),
                            ))
                        }
                    }
                })
                .map_err(|e| Error::Io {
                    context: "spawning the consumer thread".into(),
                    source: e,
                })?
        };
        let handle = AppHandle {
            config: config.clone(),
            registry: registry.clone(),
            partitions: n,
            tables: table_meta.into(),
            senders: senders.clone(),
            directory: directory.directory().clone(),
        };
        let app = RunningApp {
            config: config.clone(),
            registry,
            partitions: n,
            tables: tables.into_iter().map(|(t, _)| t).collect(),
            senders,
            workers,
            poller: Some(poller),
            stop,
            directory,
            handle,
        };
        tracing::info!(app = %config.application_id, partitions = n, tables = app.tables.len(), workers = config.worker_threads, "started");
        Ok(app)
    }

    /// Starts the engine ([`App::launch`]) and, when `advertised_endpoint`
    /// is set, announces it in the owner directory: the embedding
    /// application serves queries there itself. The engine alone serves
    /// no gRPC: a configuration with `grpc_listen` is refused here; start
    /// it with `strata::App`, which runs the query server too.
    pub fn start(&self, topology: Topology) -> Result<RunningApp> {
        if let Some(addr) = self.config.grpc_listen {
            return Err(Error::config(
                "grpc_listen",
                format!(
                    "{addr}: strata_engine::App serves no gRPC; start the app with strata::App (the facade), \
                     which runs the query server, or unset grpc_listen"
                ),
            ));
        }
        let mut app = self.launch(topology)?;
        if let Some(endpoint) = &self.config.advertised_endpoint {
            app.announce(endpoint.clone())?;
        }
        Ok(app)
    }
}

/// A running app: query its tables, rewind them, read its metrics, stop it.
pub struct RunningApp {
    config: Arc<AppConfig>,
    registry: Registry,
    partitions: u32,
    tables: Vec<String>,
    senders: Vec<mpsc::SyncSender<Command>>,
    workers: Vec<JoinHandle<Result<()>>>,
    poller: Option<JoinHandle<Result<()>>>,
    stop: Arc<AtomicBool>,
    /// The owner directory's threads (stopped by `stop_all`).
    directory: crate::directory::DirectoryService,
    /// What the query service needs of the app.
    handle: AppHandle,
}

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
    senders: Vec<mpsc::SyncSender<Command>>,
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
