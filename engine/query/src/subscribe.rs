//! Subscribe: a table's committed changes as a server stream, following
//! each partition wherever it is served.
//!
//! One follower task per partition followed, and one task that merges
//! their batches into the stream:
//!
//! - A follower keeps the last version it delivered (`pos`). Where the
//!   partition is readable here and up to date, it reads the version log
//!   from `pos + 1` to the latest committed version (each change's entry
//!   from the key's history) in batches, and polls for new commits
//!   (`query.subscribe_poll`) when there are none. Where it is owned
//!   elsewhere, it subscribes to that one partition on the owner from
//!   `pos` and relays. When the partition moves (it stops being readable
//!   here, or the owner's stream ends or fails as unavailable), the
//!   follower routes again from the owner directory and resumes after
//!   `pos`: versions are dense and identical on every owner (they are
//!   restored from the changelog), so no change is lost or repeated.
//! - A restoring or ownerless partition is waited for (the follower tries
//!   again when the owner directory changes); a feed never delivers
//!   uncommitted or stale changes.
//! - A forwarded feed (hops > 0) does not follow a partition that leaves
//!   its instance: it ends with UNAVAILABLE and the instance that forwarded
//!   it routes again, so forwarding chains do not grow with rebalances.
//! - The merger sends nothing until every follower has reported its
//!   starting position, so every message's `resume` cursor covers every
//!   partition followed; it sends a heartbeat when idle for
//!   [`HEARTBEAT`]. `caught_up` turns true once every follower has
//!   delivered what was committed when it started.
//! - Backpressure: bounded channels between followers, merger and the
//!   client; a slow client slows its followers, nothing else. A client
//!   that goes away stops them all.
//!
//! Changes outside the key filter are skipped, but the cursor moves past
//! them. A version past retention ends the feed with OUT_OF_RANGE.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use prost::Message;
use strata_proto::v1 as pb;
use strata_state::{At, HistoryQuery, KeyRange, Order, Point, Timestamp, Version};
use tokio::sync::mpsc;
use tonic::Status;

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::{QueryError, to_status};
use super::route::{Call, Local, Remote, Route};
use super::scan::targets;

/// An idle feed sends an empty message this often.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The stream a Subscribe call answers with.
pub(crate) type Feed = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// Where a partition's feed starts.
#[derive(Clone, Copy, Debug)]
enum StartAt {
    /// After the latest version when the follower first reads it.
    Latest,
    /// At the first version committed at or after this time.
    Time(u64),
    /// After this version.
    After(u64),
    /// At the oldest version retention keeps.
    Oldest,
}

/// What a follower tells the merger.
enum Event {
    Batch {
        partition: u32,
        changes: Vec<pb::Change>,
        pos: u64,
        caught_up: bool,
    },
    Failed(Status),
}

/// The settings every follower of one feed shares.
struct Spec {
    table: String,
    keys: Option<pb::KeyFilter>,
    range: KeyRange,
    max_batch: usize,
    options: Option<pb::RequestOptions>,
}

/// Starts a feed.
pub(crate) fn subscribe(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::SubscribeRequest,
) -> Result<Feed, QueryError> {
    let meta = ctx.table(&req.table)?;
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    // Check the representation up front (JSON only needs a JSON view).
    Repr::of(req.options.as_ref());
    let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
    let mut starts = BTreeMap::new();
    match req.start {
        None | Some(pb::subscribe_request::Start::Now(_)) => {
            for p in &targets {
                starts.insert(p.0, StartAt::Latest);
            }
        }
        Some(pb::subscribe_request::Start::FromTimeMs(t)) => {
            for p in &targets {
                starts.insert(p.0, StartAt::Time(t));
            }
        }
        Some(pb::subscribe_request::Start::After(c)) => {
            let listed: BTreeMap<u32, u64> = c
                .positions
                .iter()
                .map(|pv| (pv.partition, pv.version))
                .collect();
            for pv in &c.positions {
                ctx.check_partition(pv.partition)?;
            }
            for p in &targets {
                starts.insert(
                    p.0,
                    listed
                        .get(&p.0)
                        .map_or(StartAt::Oldest, |v| StartAt::After(*v)),
                );
            }
        }
    }
    let max_batch = if req.max_batch == 0 {
        ctx.limits.max_subscribe_batch
    } else {
        req.max_batch.min(ctx.limits.max_subscribe_batch)
    } as usize;
    let spec = Arc::new(Spec {
        table: meta.name.clone(),
        keys: req.keys.clone(),
        range,
        max_batch,
        options: req.options,
    });
    let (events, rx) = mpsc::channel(4 * starts.len().max(1));
    let followed: Vec<u32> = starts.keys().copied().collect();
    let mut followers = tokio::task::JoinSet::new();
    for (p, start) in starts {
        followers.spawn(follow(
            ctx.clone(),
            call.clone(),
            spec.clone(),
            p,
            start,
            events.clone(),
        ));
    }
    drop(events);
    let (out, out_rx) = mpsc::channel(4);
    // The merger owns the followers (they stop with it); the stream owns
    // the merger (it stops when the client goes away).
    let merger = AbortOnDrop(tokio::spawn(merge(followed, followers, rx, out)));
    Ok(Box::pin(futures_util::stream::unfold(
        (out_rx, merger),
        |(mut rx, merger)| async move { rx.recv().await.map(|m| (m, (rx, merger))) },
    )))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Merges the followers' batches into messages.
async fn merge(
    followed: Vec<u32>,
    // Held, not awaited: dropping it when the merger ends stops them.
    _followers: tokio::task::JoinSet<()>,
    mut events: mpsc::Receiver<Event>,
    out: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
) {
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut caught: BTreeMap<u32, bool> = followed.iter().map(|p| (*p, false)).collect();
    let cursor = |positions: &BTreeMap<u32, u64>| pb::Cursor {
        positions: positions
            .iter()
            .map(|(p, v)| pb::PartitionVersion {
                partition: *p,
                version: *v,
            })
            .collect(),
    };
    // Changes that arrived before every start was known.
    let mut held: Vec<pb::Change> = Vec::new();
    loop {
        let started = positions.len() == followed.len();
        let next = if started {
            match tokio::time::timeout(HEARTBEAT, events.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    let beat = pb::SubscribeResponse {
                        changes: Vec::new(),
                        resume: Some(cursor(&positions)),
                        caught_up: caught.values().all(|c| *c),
                    };
                    if out.send(Ok(beat)).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        } else {
            events.recv().await
        };
        let Some(event) = next else {
            // Every follower stopped (the client went away).
            return;
        };
        match event {
            Event::Failed(s) => {
                let _ = out.send(Err(s)).await;
                return;
            }
            Event::Batch {
                partition,
                changes,
                pos,
                caught_up,
            } => {
                positions.insert(partition, pos);
                if caught_up {
                    caught.insert(partition, true);
                }
                held.extend(changes);
                if positions.len() < followed.len() {
                    continue;
                }
                let msg = pb::SubscribeResponse {
                    changes: std::mem::take(&mut held),
                    resume: Some(cursor(&positions)),
                    caught_up: caught.values().all(|c| *c),
                };
                if out.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Why a follower stopped serving a partition from one place.
enum Stop {
    /// The partition is no longer there: route again.
    Moved,
    /// The client went away.
    Closed,
}

/// Follows partition `p` wherever it is served, until the client goes
/// away or the feed fails.
async fn follow(
    ctx: Arc<QueryContext>,
    call: Call,
    spec: Arc<Spec>,
    p: u32,
    start: StartAt,
    events: mpsc::Sender<Event>,
) {
    let partition = strata_state::Partition(p);
    let mut pos: Option<u64> = match start {
        StartAt::After(v) => Some(v),
        _ => None,
    };
    // Versions committed when the follower first served: caught up once
    // delivered.
    let mut target: Option<u64> = None;
    let mut caught_up = false;
    let mut call = call;
    call.allow_stale = false;
    loop {
        if events.is_closed() {
            return;
        }
        let seen = ctx.app.directory.changes();
        let r = match ctx.route(&call, &spec.table, partition) {
            Ok(Route::Here(local)) => {
                serve_here(
                    &ctx,
                    &spec,
                    local,
                    start,
                    &mut pos,
                    &mut target,
                    &mut caught_up,
                    &events,
                )
                .await
            }
            Ok(Route::There(remote)) => {
                serve_there(
                    &call,
                    &spec,
                    p,
                    remote,
                    start,
                    &mut pos,
                    &mut caught_up,
                    &events,
                )
                .await
            }
            Err(e) if e.is_unavailable_partition() => {
                tracing::debug!(table = %spec.table, partition = p, error = %e, "feed waiting for the partition");
                Ok(Stop::Moved)
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(Stop::Closed) => return,
            Ok(Stop::Moved) if call.hops > 0 && pos.is_some() => {
                // A forwarded feed does not chase the partition: the
                // instance that forwarded it routes again.
                let e = QueryError::Unavailable(format!(
                    "partition {p} of table {:?} moved away from this instance; subscribe again from the last \
                     cursor",
                    spec.table
                ));
                let _ = events.send(Event::Failed(to_status(&e))).await;
                return;
            }
            Ok(Stop::Moved) => {
                ctx.app
                    .directory
                    .changed_since(seen, Duration::from_millis(500))
                    .await;
            }
            Err(e) => {
                let _ = events.send(Event::Failed(to_status(&e))).await;
                return;
            }
        }
    }
}

/// Serves a partition readable here until it moves or the client leaves.
#[allow(clippy::too_many_arguments)]
async fn serve_here(
    ctx: &Arc<QueryContext>,
    spec: &Arc<Spec>,
    local: Local,
    start: StartAt,
    pos: &mut Option<u64>,
    target: &mut Option<u64>,
    caught_up: &mut bool,
    events: &mpsc::Sender<Event>,
) -> Result<Stop, QueryError> {
    let p = local.partition;
    let reader = local.reader;
    let latest = reader.latest_version().0;
    // Finding a start reads RocksDB (a time seek, a retention bisection):
    // off the tokio workers.
    let from = match *pos {
        Some(v) => v,
        None => {
            let r = reader.clone();
            blocking(move || start_version(&r, start, latest)).await?
        }
    };
    if from > latest {
        return Err(QueryError::invalid(format!(
            "the cursor of partition {p} is at version {from}, past its latest committed version {latest}; \
             resume from a cursor this table gave, or subscribe from now"
        )));
    }
    let target = *target.get_or_insert(latest);
    *pos = Some(from);
    *caught_up |= from >= target;
    let report = Event::Batch {
        partition: p.0,
        changes: Vec::new(),
        pos: from,
        caught_up: *caught_up,
    };
    if events.send(report).await.is_err() {
        return Ok(Stop::Closed);
    }
    let mut at = from;
    loop {
        // The registry's reader, each round: a partition that moved away
        // or started restoring stops here at once.
        let Some(reader) = ctx.app.registry.reader(&spec.table, p) else {
            return Ok(Stop::Moved);
        };
        let latest = reader.latest_version().0;
        if latest < at {
            // The partition went back (its state was rebuilt to less):
            // the owner is not the one the cursor came from.
            return Ok(Stop::Moved);
        }
        if latest == at {
            if events.is_closed() {
                return Ok(Stop::Closed);
            }
            tokio::time::sleep(ctx.limits.subscribe_poll).await;
            continue;
        }
        let upto = latest.min(at + spec.max_batch as u64);
        let (changes, upto) = {
            let (spec, ctx2) = (spec.clone(), ctx.clone());
            blocking(move || read_changes(&ctx2, &spec, &reader, p, at, upto)).await?
        };
        at = upto;
        *pos = Some(at);
        *caught_up |= at >= target;
        let batch = Event::Batch {
            partition: p.0,
            changes,
            pos: at,
            caught_up: *caught_up,
        };
        if events.send(batch).await.is_err() {
            return Ok(Stop::Closed);
        }
    }
}

/// The version after which a feed that starts at `start` begins, in a
/// partition whose latest version is `latest`.
fn start_version(
    reader: &strata_state::PartitionReader<strata_state::store::RocksStore>,
    start: StartAt,
    latest: u64,
) -> Result<u64, QueryError> {
    Ok(match start {
        StartAt::Latest => latest,
        StartAt::Time(0) | StartAt::Oldest => oldest_kept(reader),
        StartAt::Time(t) => {
            // The last version before `t`: its successors were
            // committed at or after `t`.
            match reader.resolve(At::Time(Timestamp(t - 1))) {
                Ok(v) => v.0,
                Err(e @ strata_state::Error::BeyondRetention { .. }) => {
                    // Older than anything kept: fine only if nothing
                    // was pruned before `t`.
                    let oldest = oldest_kept(reader);
                    let ok = oldest == 0
                        || reader
                            .version_record(Version(oldest))?
                            .is_some_and(|r| r.time.0 >= t);
                    if !ok {
                        return Err(e.into());
                    }
                    oldest
                }
                Err(e) => return Err(e.into()),
            }
        }
        StartAt::After(v) => v,
    })
}

/// The changes of versions `after + 1 ..= upto` of partition `p` within
/// the feed's key filter, cut to fit one message; with the last version
/// they cover.
fn read_changes(
    ctx: &QueryContext,
    spec: &Spec,
    reader: &strata_state::PartitionReader<strata_state::store::RocksStore>,
    p: strata_state::Partition,
    after: u64,
    upto: u64,
) -> Result<(Vec<pb::Change>, u64), QueryError> {
    let meta = ctx.table(&spec.table)?;
    let render = Render {
        meta,
        repr: Repr::of(spec.options.as_ref()),
    };
    let mut out = Vec::new();
    let budget = ctx.reply_budget() / 2;
    let mut used = 0;
    for v in after + 1..=upto {
        let Some(rec) = reader.version_record(Version(v))? else {
            return Err(QueryError::State(strata_state::Error::BeyondRetention {
                location: Box::new(reader.location().clone()),
                key: None,
                point: Point::Version(Version(v)),
                retention: reader.retention().to_string(),
                oldest: format!("version {}", oldest_kept(reader) + 1),
            }));
        };
        if !spec.range.contains(&rec.key) {
            continue;
        }
        let q = HistoryQuery {
            from: Some(Point::Version(Version(v))),
            to: Some(Point::Version(Version(v))),
            order: Order::Ascending,
            limit: 1,
        };
        let Some(h) = reader.history(&rec.key, &q)?.entries.into_iter().next() else {
            return Err(QueryError::Internal(format!(
                "version {v} of partition {p} is in the version log but not in its key's history"
            )));
        };
        let change = pb::Change {
            partition: p.0,
            key: render.key(&rec.key),
            key_json: render.key_json(&rec.key),
            entry: Some(render.history_entry(h)),
        };
        used += change.encoded_len() + 8;
        out.push(change);
        if used > budget {
            // The rest comes in the next message: the cursor says where
            // this one stopped.
            return Ok((out, v));
        }
    }
    Ok((out, upto))
}

/// The oldest version after which every change is still in the version
/// log (0 when nothing was pruned).
fn oldest_kept<S: strata_state::store::KvStore>(r: &strata_state::PartitionReader<S>) -> u64 {
    super::tables::oldest_readable(r).0
}

/// Relays one partition's feed from its owner until it moves or the
/// client leaves.
#[allow(clippy::too_many_arguments)]
async fn serve_there(
    call: &Call,
    spec: &Arc<Spec>,
    partition: u32,
    mut remote: Remote,
    start: StartAt,
    pos: &mut Option<u64>,
    caught_up: &mut bool,
    events: &mpsc::Sender<Event>,
) -> Result<Stop, QueryError> {
    let req = pb::SubscribeRequest {
        table: spec.table.clone(),
        start: Some(match (*pos, start) {
            (Some(v), _) | (None, StartAt::After(v)) => {
                pb::subscribe_request::Start::After(pb::Cursor {
                    positions: vec![pb::PartitionVersion {
                        partition,
                        version: v,
                    }],
                })
            }
            (None, StartAt::Latest) => pb::subscribe_request::Start::Now(pb::Latest {}),
            (None, StartAt::Time(t)) => pb::subscribe_request::Start::FromTimeMs(t),
            (None, StartAt::Oldest) => pb::subscribe_request::Start::After(pb::Cursor {
                positions: Vec::new(),
            }),
        }),
        keys: spec.keys.clone(),
        partition: Some(partition),
        max_batch: spec.max_batch as u32,
        options: Some(call.forwarded_options(spec.options)),
    };
    let (member, endpoint) = (remote.owner.member.clone(), remote.owner.endpoint.clone());
    let forwarded = |status: Status| QueryError::Forwarded {
        member: member.clone(),
        endpoint: endpoint.clone(),
        status,
    };
    let mut stream = match remote.query.subscribe(call.stream_request(req)).await {
        Ok(s) => s.into_inner(),
        Err(s) if retryable_feed(&s) => return Ok(Stop::Moved),
        Err(s) => return Err(forwarded(s)),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = events.closed() => return Ok(Stop::Closed),
        };
        match msg {
            Ok(Some(m)) => {
                let Some(v) = m
                    .resume
                    .as_ref()
                    .and_then(|c| c.positions.iter().find(|pv| pv.partition == partition))
                    .map(|pv| pv.version)
                else {
                    continue;
                };
                *pos = Some(v);
                *caught_up |= m.caught_up;
                let batch = Event::Batch {
                    partition,
                    changes: m.changes,
                    pos: v,
                    caught_up: *caught_up,
                };
                if events.send(batch).await.is_err() {
                    return Ok(Stop::Closed);
                }
            }
            Ok(None) => return Ok(Stop::Moved),
            Err(s) if retryable_feed(&s) => return Ok(Stop::Moved),
            Err(s) => return Err(forwarded(s)),
        }
    }
}

/// Whether a feed's failure on an owner means "route again": the owner
/// gave the partition up or stopped, or the connection broke. The
/// contract's own answers (unknown table, bad cursor, beyond retention,
/// credentials) end the feed.
fn retryable_feed(s: &Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}
