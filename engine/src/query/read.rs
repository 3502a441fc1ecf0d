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
use strata_state::{At, HistoryQuery, Order, Point, Version};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::{QueryError, to_status};
use super::route::{Call, Local, routed};
use super::token::{self, Kind};

/// Get: the value of one key at one point, read here or on the key's
/// partition's owner.
pub(crate) async fn get(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::GetRequest,
) -> Result<pb::GetResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let key = convert::key_bytes(meta, req.key_ref.clone().map(Into::into))?;
    let p = ctx.partition_of_key(meta, &key)?;
    routed(
        &ctx,
        &call,
        &meta.name,
        p,
        |local| std::future::ready(get_here(&ctx, &req, key, local)),
        |mut remote| {
            let r = call.request(pb::GetRequest {
                options: Some(call.forwarded_options(req.options)),
                ..req.clone()
            });
            async move {
                Ok(remote
                    .query
                    .get(r.map_err(|e| to_status(&e))?)
                    .await?
                    .into_inner())
            }
        },
    )
    .await
}

fn get_here(
    ctx: &QueryContext,
    req: &pb::GetRequest,
    key: Vec<u8>,
    local: Local,
) -> Result<pb::GetResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
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
}

/// History: one page of a key's versions, read here or on the key's
/// partition's owner.
pub(crate) async fn history(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let key = convert::key_bytes(meta, req.key_ref.clone().map(Into::into))?;
    let p = ctx.partition_of_key(meta, &key)?;
    routed(
        &ctx,
        &call,
        &meta.name,
        p,
        |local| history_here(ctx.clone(), req.clone(), key, local),
        |mut remote| {
            let r = call.request(pb::HistoryRequest {
                options: Some(call.forwarded_options(req.options)),
                ..req.clone()
            });
            async move {
                Ok(remote
                    .query
                    .history(r.map_err(|e| to_status(&e))?)
                    .await?
                    .into_inner())
            }
        },
    )
    .await
}

async fn history_here(
    ctx: Arc<QueryContext>,
    req: pb::HistoryRequest,
    key: Vec<u8>,
    local: Local,
) -> Result<pb::HistoryResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };
    let reader = local.reader.clone();
    let order = match req.order() {
        pb::Order::Ascending => Order::Ascending,
        pb::Order::Unspecified | pb::Order::Descending => Order::Descending,
    };
    let identity = token::identity(&pb::HistoryRequest {
        limit: 0,
        page_token: Vec::new(),
        options: None,
        ..req.clone()
    });
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
        Some(v) => token::seal(Kind::History, identity, &HistoryCursor { next: v.0 })?,
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
