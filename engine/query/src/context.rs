//! What every query needs of the app: its tables, which partition holds a
//! key, the reader of a partition owned here (or why there is none), and
//! how to describe the serving instance.
//!
//! Readers come from the registry on every request, so a partition that
//! moves away or starts restoring stops answering at once.

use strata_proto::v1 as pb;
use strata_state::store::RocksStore;
use strata_state::{Partition, PartitionReader};

use super::error::QueryError;
use strata_engine::config::QueryConfig;
use strata_engine::keyroute::KeyRoute;
use strata_engine::registry::PartitionState;
use strata_engine::{AppHandle, TableMeta};

/// The app-level state the query and admin services work from.
pub(crate) struct QueryContext {
    pub app: AppHandle,
    /// This instance, as replies name it.
    pub instance: pb::Instance,
    pub limits: QueryConfig,
    /// Clients of the other instances, for forwarding.
    pub(crate) peers: crate::peers::Peers,
}

impl QueryContext {
    pub(crate) fn new(app: AppHandle, local: std::net::SocketAddr) -> QueryContext {
        // The same names the owner directory publishes: replies and the
        // directory agree on who served what.
        let id = app.directory.member_id().to_string();
        let endpoint = strata_engine::advertised_endpoint(&app.config, local)
            .unwrap_or_else(|_| format!("http://{local}"));
        let instance = pb::Instance { id, endpoint };
        QueryContext {
            limits: app.config.query.clone(),
            instance,
            peers: Default::default(),
            app,
        }
    }

    /// The table named `name`.
    pub(crate) fn table(&self, name: &str) -> Result<&TableMeta, QueryError> {
        self.app
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| QueryError::UnknownTable {
                table: name.to_string(),
                known: self.app.tables.iter().map(|t| t.name.clone()).collect(),
            })
    }

    /// The number of partitions of every table.
    pub(crate) fn partitions(&self) -> u32 {
        self.app.partitions
    }

    /// Checks a partition number given by a request.
    pub(crate) fn check_partition(&self, p: u32) -> Result<Partition, QueryError> {
        if p >= self.partitions() {
            return Err(QueryError::invalid(format!(
                "partition {p} does not exist: the tables have {} partitions (0 to {})",
                self.partitions(),
                self.partitions().saturating_sub(1)
            )));
        }
        Ok(Partition(p))
    }

    /// Where to look for `key` (table bytes, already checked) of `meta`:
    /// see [`strata_engine::keyroute`].
    pub(crate) fn route_key(&self, meta: &TableMeta, key: &[u8]) -> Result<KeyRoute, QueryError> {
        self.app
            .route_key(meta, key)
            .map_err(|e| QueryError::invalid(format!("key for table {:?}: {e}", meta.name)))
    }

    /// The partition a request names, or else where its key routes.
    pub(crate) fn route_request(
        &self,
        meta: &TableMeta,
        key: &[u8],
        partition: Option<u32>,
    ) -> Result<KeyRoute, QueryError> {
        match partition {
            Some(p) => Ok(KeyRoute::Hash(self.check_partition(p)?)),
            None => self.route_key(meta, key),
        }
    }

    /// The reader of partition `p` of `table` if it is owned here and
    /// running; otherwise why not.
    pub(crate) fn reader(
        &self,
        table: &str,
        p: Partition,
    ) -> Result<PartitionReader<RocksStore>, QueryError> {
        if let Some(r) = self.app.registry.reader(table, p) {
            return Ok(r);
        }
        match self.local_state(table, p) {
            Some(PartitionState::Restoring { records, rate }) => Err(QueryError::Restoring {
                table: table.to_string(),
                partition: p,
                records,
                rate,
            }),
            // Running again by now, or gone: either way not readable at
            // the moment it was asked.
            _ => Err(QueryError::NotLocal {
                table: table.to_string(),
                partition: p,
            }),
        }
    }

    /// The state of partition `p` of `table` on this instance, if owned here.
    pub(crate) fn local_state(&self, table: &str, p: Partition) -> Option<PartitionState> {
        self.app
            .registry
            .partitions()
            .into_iter()
            .find(|(t, q, _)| t == table && *q == p)
            .map(|(_, _, s)| s)
    }

    /// A partition that could not take part in a scatter-gather.
    pub(crate) fn unavailable(&self, p: Partition, e: &QueryError) -> pb::UnavailablePartition {
        let status = super::error::to_status(e);
        let restoring = match e {
            QueryError::Restoring { records, rate, .. } => Some(pb::Restoring {
                records: *records,
                rate: *rate,
                remaining: None,
            }),
            _ => None,
        };
        let owner = match e {
            QueryError::Forwarded {
                member, endpoint, ..
            } => Some(pb::Instance {
                id: member.clone(),
                endpoint: endpoint.clone(),
            }),
            _ => self
                .app
                .directory
                .owner(p)
                .filter(|o| o.member != self.app.directory.member_id())
                .map(|o| pb::Instance {
                    id: o.member,
                    endpoint: o.endpoint,
                }),
        };
        pb::UnavailablePartition {
            partition: p.0,
            code: status.code() as i32,
            message: status.message().to_string(),
            owner,
            restoring,
        }
    }

    /// A page size from a request: 0 means the default; larger than the
    /// maximum is clamped.
    pub(crate) fn page_size(&self, asked: u32) -> usize {
        let n = if asked == 0 {
            self.limits.default_page_size
        } else {
            asked.min(self.limits.max_page_size)
        };
        n as usize
    }

    /// How many bytes of items one reply may carry, leaving room for the
    /// rest of the message.
    pub(crate) fn reply_budget(&self) -> usize {
        self.limits.max_message_bytes - self.limits.max_message_bytes / 8
    }
}

/// Runs bounded blocking work (RocksDB iteration) off the tokio workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, QueryError>
where
    F: FnOnce() -> Result<T, QueryError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QueryError::Internal(format!("a read task failed: {e}")))?
}
