//! Get and History: reads of one key, served by the partition that holds
//! it.
//!
//! A Get is a point lookup (or one history seek for a past point) and runs
//! on the calling tokio worker; a History page iterates and runs on the
//! blocking pool, bounded by its page size.

use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use strata_proto::v1 as pb;
use strata_state::{At, HistoryQuery, Order, Partition, Point, Version};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::QueryError;
use super::route::{Call, Local, routed};
use super::token::{self, Kind};
use strata_engine::TableMeta;
use strata_engine::keyroute::KeyRoute;

use crate::forward::forward;

/// Get: the value of one key at one point, read here or on the key's
/// partition's owner; when the key's partition cannot be vouched for, from
/// every partition (see [`strata_engine::keyroute`]).
pub(crate) async fn get(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::GetRequest,
) -> Result<pb::GetResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let key = convert::key_bytes(meta, req.key_ref.clone().map(Into::into))?;
    let route = ctx.route_request(meta, &key, req.partition)?;
    looked_up(
        &ctx,
        route,
        |p| get_in(&ctx, &call, &req, meta, &key, p),
        |r| matches!(r.outcome, Some(pb::get_response::Outcome::Found(_))),
    )
    .await
}

/// Reads `route`'s partitions with `read` until one `has` the key: the
/// first partition alone when the route trusts it; otherwise the first,
/// then (if it lacks the key) all the others at once. A key found in
/// several partitions (a producer that placed it in more than one) is
/// answered from the lowest. Answers "absent" (the first reply without the
/// key) only when every partition asked answered; otherwise the first
/// failure, as the key may be in the partition that failed.
async fn looked_up<T, F, Fut>(
    ctx: &QueryContext,
    route: KeyRoute,
    read: F,
    has: impl Fn(&T) -> bool,
) -> Result<T, QueryError>
where
    F: Fn(Partition) -> Fut,
    Fut: std::future::Future<Output = Result<T, QueryError>>,
{
    let n = ctx.partitions();
    let (first, rest): (Option<Partition>, Vec<Partition>) = match route {
        KeyRoute::Hash(p) => return read(p).await,
        KeyRoute::Confirm(p) => (Some(p), (0..n).map(Partition).filter(|q| *q != p).collect()),
        KeyRoute::Scatter => (None, (0..n).map(Partition).collect()),
    };
    let mut miss = None;
    if let Some(p) = first {
        let r = read(p).await?;
        if has(&r) {
            return Ok(r);
        }
        miss = Some(r);
    }
    ctx.app.registry.count_key_scatter();
    let replies = futures_util::future::join_all(rest.into_iter().map(&read)).await;
    let mut failure = None;
    for r in replies {
        match r {
            Ok(r) if has(&r) => return Ok(r),
            Ok(r) => {
                miss.get_or_insert(r);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    miss.ok_or_else(|| QueryError::invalid("the table has no partitions"))
}

/// Get in partition `p`, here or on its owner (the forwarded request names
/// the partition, so the owner reads it and nothing else).
async fn get_in(
    ctx: &Arc<QueryContext>,
    call: &Call,
    req: &pb::GetRequest,
    meta: &TableMeta,
    key: &[u8],
    p: Partition,
) -> Result<pb::GetResponse, QueryError> {
    routed(
        ctx,
        call,
        &meta.name,
        p,
        |local| std::future::ready(get_here(ctx, req, meta, key.to_vec(), local)),
        forward(call, req, p),
    )
    .await
}

fn get_here(
    ctx: &QueryContext,
    req: &pb::GetRequest,
    meta: &TableMeta,
    key: Vec<u8>,
    local: Local,
) -> Result<pb::GetResponse, QueryError> {
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };
    let reader = &local.reader;
    // Resolve once, then read at that version: the reply's read_version is
    // exactly the state read, even if the owner commits meanwhile.
    let v = reader.resolve(convert::at(req.at))?;
    let outcome = match reader.get_at(&key, At::Version(v))? {
        Some(found) => {
            let entry = render.entry(found);
            if entry.encoded_len() > ctx.reply_budget() {
                return Err(QueryError::TooLarge(format!(
                    "the value is {} bytes, more than a reply may carry ({} bytes, query.max_message_bytes); \
                     read it with representation BYTES or JSON only, or raise the bound",
                    entry.encoded_len(),
                    ctx.reply_budget()
                )));
            }
            pb::get_response::Outcome::Found(entry)
        }
        None => pb::get_response::Outcome::Absent(pb::Absent {}),
    };
    Ok(pb::GetResponse {
        key: render.key(&key),
        key_json: render.key_json(&key),
        outcome: Some(outcome),
        served: Some(local.served(ctx, v)),
    })
}

/// Where a history listing continues.
#[derive(Serialize, Deserialize)]
struct HistoryCursor {
    /// The next page's newest (descending) or oldest (ascending) version.
    next: u64,
    /// The partition the listing is in (the key was looked up there).
    partition: u32,
}

/// What a History page token is bound to: the request less its paging,
/// options and partition (a forwarded request names the partition).
fn history_identity(req: &pb::HistoryRequest) -> u32 {
    token::identity(&pb::HistoryRequest {
        limit: 0,
        page_token: Vec::new(),
        options: None,
        partition: None,
        ..req.clone()
    })
}

/// History: one page of a key's versions, read here or on the key's
/// partition's owner; when the key's partition cannot be vouched for, the
/// first page is looked for in every partition, and later pages follow
/// the partition their token names.
pub(crate) async fn history(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let key = convert::key_bytes(meta, req.key_ref.clone().map(Into::into))?;
    let route = if req.page_token.is_empty() {
        ctx.route_request(meta, &key, req.partition)?
    } else {
        let c: HistoryCursor = token::open(Kind::History, history_identity(&req), &req.page_token)?;
        KeyRoute::Hash(ctx.check_partition(c.partition)?)
    };
    looked_up(
        &ctx,
        route,
        |p| history_in(&ctx, &call, &req, meta, &key, p),
        |r| !r.entries.is_empty() || r.truncated_by_retention,
    )
    .await
}

/// History in partition `p`, here or on its owner.
async fn history_in(
    ctx: &Arc<QueryContext>,
    call: &Call,
    req: &pb::HistoryRequest,
    meta: &TableMeta,
    key: &[u8],
    p: Partition,
) -> Result<pb::HistoryResponse, QueryError> {
    routed(
        ctx,
        call,
        &meta.name,
        p,
        |local| history_here(ctx.clone(), req.clone(), meta, key.to_vec(), local),
        forward(call, req, p),
    )
    .await
}

async fn history_here(
    ctx: Arc<QueryContext>,
    req: pb::HistoryRequest,
    meta: &TableMeta,
    key: Vec<u8>,
    local: Local,
) -> Result<pb::HistoryResponse, QueryError> {
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };
    let reader = local.reader.clone();
    let order = match req.order() {
        pb::Order::Ascending => Order::Ascending,
        pb::Order::Unspecified | pb::Order::Descending => Order::Descending,
    };
    let identity = history_identity(&req);
    let mut q = HistoryQuery {
        from: convert::point(req.from),
        to: convert::point(req.to),
        order,
        limit: ctx.page_size(req.limit),
    };
    if !req.page_token.is_empty() {
        let c: HistoryCursor = token::open(Kind::History, identity, &req.page_token)?;
        match order {
            Order::Ascending => q.from = Some(Point::Version(Version(c.next))),
            Order::Descending => q.to = Some(Point::Version(Version(c.next))),
        }
    }
    let (page, reader) = {
        let key = key.clone();
        blocking(move || Ok((reader.history(&key, &q)?, reader))).await?
    };
    let read_version = reader.latest_version();
    let budget = ctx.reply_budget();
    let mut used = 0;
    let mut entries = Vec::with_capacity(page.entries.len());
    let mut next = page.next;
    for h in page.entries {
        let version = h.version;
        let e = render.history_entry(h);
        let size = e.encoded_len() + 8;
        if used + size > budget {
            if entries.is_empty() {
                return Err(QueryError::TooLarge(format!(
                    "version {} of the key is {size} bytes, more than a reply may carry ({budget} bytes, \
                     query.max_message_bytes); ask for representation BYTES or JSON only, or raise the bound",
                    version.0
                )));
            }
            next = Some(version);
            break;
        }
        used += size;
        entries.push(e);
    }
    let next_page_token = match next {
        Some(v) => token::seal(
            Kind::History,
            identity,
            &HistoryCursor {
                next: v.0,
                partition: local.partition.0,
            },
        )?,
        None => Vec::new(),
    };
    Ok(pb::HistoryResponse {
        key: render.key(&key),
        key_json: render.key_json(&key),
        entries,
        next_page_token,
        truncated_by_retention: page.truncated_by_retention,
        served: Some(local.served(&ctx, read_version)),
    })
}
