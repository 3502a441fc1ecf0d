//! The owner directory service: its topic, the follower and publisher
//! threads, and this instance's member id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::Directory;
use crate::config::AppConfig;
use crate::kafka::admin::{KafkaAdmin, TopicSpec};
use crate::registry::Registry;
use crate::{Error, Result};

/// Creates (with `manage_topics`) or checks the directory topic.
pub(crate) fn ensure_topic(admin: &KafkaAdmin, config: &AppConfig) -> Result<()> {
    let name = config.directory_topic();
    if config.manage_topics {
        admin.ensure_topic(&TopicSpec::new(name, 1).config("cleanup.policy", "compact"))?;
        return Ok(());
    }
    match admin.partition_count(&name)? {
        Some(1) => Ok(()),
        Some(n) => Err(Error::Topology(format!(
            "the owner directory topic {name:?} has {n} partitions; recreate it with 1 partition and cleanup.policy=compact"
        ))),
        None => Err(Error::Topology(format!(
            "topic {name:?} does not exist (manage_topics is off): create it with 1 partition and \
             cleanup.policy=compact (it is the owner directory)"
        ))),
    }
}

/// The directory's threads: a follower (always) and a publisher (when the
/// instance advertises an endpoint). Dropping it stops both.
pub(crate) struct DirectoryService {
    directory: Directory,
    publisher: Option<Stoppable>,
    follower: Option<Stoppable>,
}

impl DirectoryService {
    /// Starts following the directory topic. Publishing starts with
    /// [`DirectoryService::publish`], once the endpoint is known.
    pub(crate) fn follow(config: &AppConfig) -> Result<DirectoryService> {
        let ttl = config
            .directory_ttl
            .unwrap_or(config.kafka.session_timeout * 3);
        let member = member_id(config);
        let directory = Directory::new(member.clone(), ttl);
        let mut service = DirectoryService {
            directory: directory.clone(),
            publisher: None,
            follower: None,
        };
        let follower = super::follower::Follower::new(config, directory)?;
        service.follower = Some(Stoppable::spawn("strata-directory-follow", move |stop| {
            follower.run(stop)
        })?);
        tracing::info!(
            member = %member, topic = %config.directory_topic(), ttl_ms = ttl.as_millis() as u64,
            "following the owner directory"
        );
        Ok(service)
    }

    /// Starts publishing this instance's partitions with `endpoint`, the
    /// gRPC endpoint others reach it at.
    pub(crate) fn publish(
        &mut self,
        config: &AppConfig,
        registry: Registry,
        endpoint: String,
    ) -> Result<()> {
        let member = self.directory.member_id().to_string();
        let ttl = self.directory.ttl();
        tracing::info!(member = %member, endpoint = %endpoint, "publishing to the owner directory");
        let publisher = super::publisher::Publisher::new(config, registry, member, endpoint, ttl)?;
        self.publisher = Some(Stoppable::spawn("strata-directory-publish", move |stop| {
            publisher.run(stop)
        })?);
        Ok(())
    }

    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Stops publishing: the publisher withdraws this instance (tombstone).
    pub(crate) fn stop_publisher(&mut self) {
        if let Some(p) = self.publisher.take() {
            p.stop();
        }
    }

    /// Stops both threads.
    pub(crate) fn stop(&mut self) {
        self.stop_publisher();
        if let Some(f) = self.follower.take() {
            f.stop();
        }
    }
}

impl Drop for DirectoryService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A named thread that runs until its stop channel disconnects.
struct Stoppable {
    name: &'static str,
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Stoppable {
    fn spawn(
        name: &'static str,
        f: impl FnOnce(mpsc::Receiver<()>) + Send + 'static,
    ) -> Result<Stoppable> {
        let (stop, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(rx))
            .map_err(|e| Error::Io {
                context: format!("spawning thread {name}"),
                source: e,
            })?;
        Ok(Stoppable { name, stop, handle })
    }

    fn stop(self) {
        drop(self.stop);
        if self.handle.join().is_err() {
            tracing::error!(thread = self.name, "owner directory thread panicked");
        }
    }
}

/// The instance's member id: its static membership id, or one unique to
/// this start.
pub(super) fn member_id(config: &AppConfig) -> String {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    if let Some(id) = &config.instance_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{host}-{}-{nanos}-{}",
        std::process::id(),
        STARTS.fetch_add(1, Ordering::Relaxed)
    )
}
