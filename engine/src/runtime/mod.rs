//! Running a topology against Kafka: startup checks and topic creation,
//! the consumer-group thread, the worker threads, and graceful shutdown.

mod dispatch;
mod handle;
pub mod keyroute;
mod priority;
mod running;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use strata_state::store::RocksEnv;

use crate::config::{AppConfig, StartPosition};
use crate::partitioner::RouteCheck;
use crate::registry::Registry;

use crate::topology::Topology;
use crate::{Error, Result};
use strata_kafka::admin::{KafkaAdmin, TopicSpec};
use strata_kafka::group::{Group, GroupOptions, PollEnd};
use strata_kafka::output::OutputProducer;
use strata_kafka::producer::AckedProducer;

use worker::WorkerEnv;

pub use handle::{AppHandle, TableMeta, advertised_endpoint};
pub use running::RunningApp;

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
