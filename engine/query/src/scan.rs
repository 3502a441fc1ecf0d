//! Scan: the keys of a range at one point, in pages.
//!
//! A scan of one partition (named, or the one a single-key filter lives
//! in) is served by that partition's owner: here (`scan_here`) or
//! forwarded (`route`). A scan of every partition is gathered from the
//! owners one partition at a time and merged in encoded key order
//! (`gather`). Served here, the first page pins the version the partition
//! reads in the page token, so every page reads the same state while the
//! table changes; each page reads at most `page size` items, on the
//! blocking pool.

use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use strata_proto::v1 as pb;
use strata_state::{At, KeyRange, Partition, ScanRequest, ScanToken, Version, Versioned};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::QueryError;
use super::gather::{self, Start, Sub, SubPage};
use super::page;
use super::route::{Call, Local, routed};
use super::token::{self, Kind};
use crate::forward::forward;
use strata_engine::TableMeta;

/// Where one partition's scan resumes.
#[derive(Clone, Serialize, Deserialize)]
enum Resume {
    /// A new state-level scan from this lower bound.
    From(Start),
    /// The state-level scan from this bound, continued with its token.
    Token(Start, Vec<u8>),
    /// Nothing left.
    Done,
}

#[derive(Clone, Serialize, Deserialize)]
struct PartCursor {
    partition: u32,
    version: u64,
    resume: Resume,
}

impl page::Position for PartCursor {
    fn partition(&self) -> Partition {
        Partition(self.partition)
    }

    fn done(&self) -> bool {
        matches!(self.resume, Resume::Done)
    }
}

/// A scan's page token body.
#[derive(Serialize, Deserialize)]
struct ScanCursor {
    parts: Vec<PartCursor>,
    /// Partitions that could not be read on the first page.
    missing: Vec<u32>,
}

/// Which partitions a request concerns: the one it names, the one a
/// single-key filter lives in (all, when the key cannot be routed by its
/// hash), or all.
pub(crate) fn targets(
    ctx: &QueryContext,
    meta: &TableMeta,
    partition: Option<u32>,
    single: Option<&[u8]>,
) -> Result<Vec<Partition>, QueryError> {
    if let Some(p) = partition {
        // With a single-key filter too, the key may live elsewhere: the
        // partition then simply has nothing to show.
        return Ok(vec![ctx.check_partition(p)?]);
    }
    if let Some(k) = single {
        return Ok(ctx.route_key(meta, k)?.targets(ctx.partitions()));
    }
    Ok((0..ctx.partitions()).map(Partition).collect())
}

/// A version is a point of one partition only.
pub(crate) fn check_single(at: At, targets: &[Partition], what: &str) -> Result<(), QueryError> {
    if matches!(at, At::Version(_)) && targets.len() != 1 {
        return Err(QueryError::invalid(format!(
            "{what} at a version needs one partition (versions are per partition): set `partition` or a single-key \
             filter, or read as of a time"
        )));
    }
    Ok(())
}

/// Scan: one page of keys and values, from the partition concerned (here
/// or on its owner) or gathered from all.
pub(crate) async fn scan(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::ScanRequest,
) -> Result<pb::ScanResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
    if let [p] = targets[..] {
        let req = pb::ScanRequest {
            partition: Some(p.0),
            ..req
        };
        return scan_one(&ctx, &call, meta, p, req).await;
    }
    check_single(convert::at(req.at), &targets, "a scan")?;
    let page_size = ctx.page_size(req.page_size);
    let identity = token::identity(&pb::ScanRequest {
        page_size: 0,
        page_token: Vec::new(),
        options: None,
        ..req.clone()
    });
    let repr = Repr::of(req.options.as_ref());
    let options = gather::sub_options(req.options.as_ref());
    // Each partition gets three quarters of the time left; the rest is
    // kept to answer with what came back.
    let part_call = call.keeping(0.25);
    let fetch = |p: Partition, sub: Sub| {
        let at = match &sub.pins {
            Some(v) => Some(pb::At {
                point: Some(pb::at::Point::Version(v[0])),
            }),
            None => req.at,
        };
        let one = pb::ScanRequest {
            table: req.table.clone(),
            keys: gather::sub_keys(req.keys.clone(), sub.start.as_ref(), &range.end),
            at,
            partition: Some(p.0),
            page_size: gather::sub_page_size(page_size, ctx.partitions()) as u32,
            page_token: sub.token,
            options: Some(options),
        };
        let (ctx, call) = (&ctx, &part_call);
        async move {
            let r = scan_one(ctx, call, meta, p, one).await?;
            let read = r.served.first().map(|s| s.read_version).ok_or_else(|| {
                QueryError::Internal(format!(
                    "partition {p} answered a scan without saying what it read"
                ))
            })?;
            Ok(SubPage {
                items: r.items.into_iter().map(|i| (i.key.clone(), i)).collect(),
                next_token: r.next_page_token,
                served: r.served,
                pins: vec![read],
            })
        }
    };
    let g = gather::gather(
        &ctx,
        identity,
        &req.page_token,
        page_size,
        "scan",
        |i: &pb::ScanItem| i.encoded_len(),
        fetch,
    )
    .await?;
    let items = g
        .items
        .into_iter()
        .map(|(_, mut i)| {
            if !repr.bytes {
                i.key.clear();
                if let Some(e) = &mut i.entry {
                    e.value.clear();
                }
            }
            i
        })
        .collect();
    Ok(pb::ScanResponse {
        items,
        next_page_token: g.next_page_token,
        partial: !g.unavailable.is_empty(),
        unavailable: g.unavailable,
        served: g.served,
    })
}

/// A scan of one partition, served here or by its owner.
async fn scan_one(
    ctx: &Arc<QueryContext>,
    call: &Call,
    meta: &TableMeta,
    p: Partition,
    req: pb::ScanRequest,
) -> Result<pb::ScanResponse, QueryError> {
    routed(
        ctx,
        call,
        &req.table,
        p,
        |local| scan_here(ctx.clone(), req.clone(), meta, local),
        forward(call, &req, p),
    )
    .await
}

/// Scan of one partition readable here (`req.partition` is `local`'s).
async fn scan_here(
    ctx: Arc<QueryContext>,
    req: pb::ScanRequest,
    meta: &TableMeta,
    local: Local,
) -> Result<pb::ScanResponse, QueryError> {
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    let page_size = ctx.page_size(req.page_size);
    let identity = token::identity(&pb::ScanRequest {
        page_size: 0,
        page_token: Vec::new(),
        options: None,
        ..req.clone()
    });

    // The partitions to read, with their pinned versions and positions.
    let page::Reads {
        jobs,
        unavailable,
        missing,
    } = if req.page_token.is_empty() {
        let at = convert::at(req.at);
        let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
        check_single(at, &targets, "a scan")?;
        page::first(&ctx, &local, targets, |p, r| {
            Ok(PartCursor {
                partition: p.0,
                version: r.resolve(at)?.0,
                resume: Resume::From(Start::of(&range.start)),
            })
        })?
    } else {
        let c: ScanCursor = token::open(Kind::Scan, identity, &req.page_token)?;
        page::next(&ctx, &local, "scan", c.parts, c.missing)?
    };

    // Read one page from every partition, off the tokio workers.
    let end = range.end.clone();
    let pages = blocking(move || {
        let mut out = Vec::with_capacity(jobs.len());
        for (part, reader) in jobs {
            let page = match (&part.resume, &reader) {
                (Resume::Done, _) | (_, None) => None,
                (Resume::From(start), Some(r)) => Some(r.scan(&ScanRequest {
                    range: KeyRange {
                        start: start.bound(),
                        end: end.clone(),
                    },
                    at: At::Version(Version(part.version)),
                    limit: page_size,
                    token: None,
                })?),
                (Resume::Token(start, t), Some(r)) => Some(r.scan(&ScanRequest {
                    range: KeyRange {
                        start: start.bound(),
                        end: end.clone(),
                    },
                    at: At::Version(Version(part.version)),
                    limit: page_size,
                    token: Some(ScanToken(t.clone())),
                })?),
            };
            out.push((part, reader, page));
        }
        Ok::<_, QueryError>(out)
    })
    .await?;

    // Merge in key order, within the page size and the reply budget.
    let mut merged: Vec<(Vec<u8>, usize, Versioned)> = Vec::new();
    for (i, (_, _, page)) in pages.iter().enumerate() {
        if let Some(page) = page {
            merged.extend(page.items.iter().map(|(k, v)| (k.clone(), i, v.clone())));
        }
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let page::Cut {
        items,
        taken,
        mut last,
    } = page::cut(
        merged.into_iter().map(|(key, i, v)| {
            let item = pb::ScanItem {
                partition: pages[i].0.partition,
                key: render.key(&key),
                key_json: render.key_json(&key),
                entry: Some(render.entry(v)),
            };
            (key, i, item)
        }),
        pages.len(),
        page_size,
        ctx.reply_budget(),
        "item",
        |_| true,
        |item| item.encoded_len(),
    )?;
    let items = items.into_iter().map(|(_, item)| item).collect();

    // Where each partition resumes.
    let mut served = Vec::new();
    let mut parts = Vec::with_capacity(pages.len());
    for (i, (mut part, reader, page)) in pages.into_iter().enumerate() {
        if let (Some(page), Some(r)) = (page, reader) {
            let _ = &r;
            served.push(local.served(&ctx, Version(part.version)));
            let start = match &part.resume {
                Resume::From(s) | Resume::Token(s, _) => s.clone(),
                Resume::Done => Start::Unbounded,
            };
            part.resume = if taken[i] == page.items.len() {
                match page.next {
                    Some(t) => Resume::Token(start, t.0),
                    None => Resume::Done,
                }
            } else {
                match last[i].take() {
                    Some(k) => Resume::From(Start::Excluded(k)),
                    None => part.resume,
                }
            };
        }
        parts.push(part);
    }
    let partial = !unavailable.is_empty();
    let more = parts.iter().any(|p| !matches!(p.resume, Resume::Done));
    let next_page_token = if more {
        token::seal(Kind::Scan, identity, &ScanCursor { parts, missing })?
    } else {
        Vec::new()
    };
    Ok(pb::ScanResponse {
        items,
        next_page_token,
        partial,
        unavailable,
        served,
    })
}
