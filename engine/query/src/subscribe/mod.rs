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
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::context::QueryContext;
use super::convert::{self, Repr};
use super::error::{QueryError, to_status};
use super::route::{Call, Route};
use super::scan::targets;

mod feed;
mod serve;

use feed::{Event, Spec, StartAt, Stop};
use serve::{serve_here, serve_there};

/// An idle feed sends an empty message this often.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The stream a Subscribe call answers with.
pub(crate) type Feed = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

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
