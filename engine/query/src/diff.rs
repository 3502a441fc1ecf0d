//! Diff: the keys whose values differ between two points, in pages; from
//! the owner of the one partition concerned, or gathered from every
//! owner and merged in key order (`gather`).
//!
//! Served here (`diff_here`), the first page resolves both points in every partition and pins them in
//! the token; each page then diffs the rest of the range after the last key
//! returned. A partition's diff walks its version log between the two
//! versions, so a page costs time proportional to the changes, bounded by
//! `query.max_diff_keys` changed keys per partition (more is
//! RESOURCE_EXHAUSTED: narrow the range or the points).

use std::ops::Bound;
use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use strata_proto::v1 as pb;
use strata_state::{At, KeyRange, Partition, Version};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::QueryError;
use super::gather::{self, Sub, SubPage};
use super::page;
use super::route::{Call, Local, routed};
use super::scan::{check_single, targets};
use super::token::{self, Kind};
use crate::forward::forward;
use strata_engine::TableMeta;

#[derive(Serialize, Deserialize)]
struct DiffPart {
    partition: u32,
    from: u64,
    to: u64,
    /// The partition's next page starts after this key (`None`: at the
    /// range's start).
    after: Option<Vec<u8>>,
    done: bool,
}

impl page::Position for DiffPart {
    fn partition(&self) -> Partition {
        Partition(self.partition)
    }

    fn done(&self) -> bool {
        self.done
    }
}

/// A diff's page token body.
#[derive(Serialize, Deserialize)]
struct DiffCursor {
    parts: Vec<DiffPart>,
    /// Partitions that could not be read on the first page.
    missing: Vec<u32>,
}

fn point(at: Option<pb::At>) -> Option<At> {
    at.and_then(|a| a.point)
        .map(|p| convert::at(Some(pb::At { point: Some(p) })))
}

/// Diff: one page of changed keys, from the partition concerned (here or
/// on its owner) or gathered from all.
pub(crate) async fn diff(
    ctx: Arc<QueryContext>,
    call: Call,
    req: pb::DiffRequest,
) -> Result<pb::DiffResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    let Some(from) = point(req.from) else {
        return Err(QueryError::invalid(
            "a diff needs `from`: the earlier point (a version or a time)",
        ));
    };
    let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
    if let [p] = targets[..] {
        let req = pb::DiffRequest {
            partition: Some(p.0),
            ..req
        };
        return diff_one(&ctx, &call, meta, p, req).await;
    }
    check_single(from, &targets, "a diff from")?;
    check_single(convert::at(req.to), &targets, "a diff to")?;
    let page_size = ctx.page_size(req.page_size);
    let identity = token::identity(&pb::DiffRequest {
        page_size: 0,
        page_token: Vec::new(),
        options: None,
        ..req.clone()
    });
    let repr = Repr::of(req.options.as_ref());
    let options = gather::sub_options(req.options.as_ref());
    let version = |v: u64| {
        Some(pb::At {
            point: Some(pb::at::Point::Version(v)),
        })
    };
    // Each partition gets three quarters of the time left; the rest is
    // kept to answer with what came back.
    let part_call = call.keeping(0.25);
    let fetch = |p: Partition, sub: Sub| {
        let (from, to) = match &sub.pins {
            Some(v) => (version(v[0]), version(v[1])),
            None => (req.from, req.to),
        };
        let one = pb::DiffRequest {
            table: req.table.clone(),
            from,
            to,
            keys: gather::sub_keys(req.keys.clone(), sub.start.as_ref(), &range.end),
            partition: Some(p.0),
            page_size: gather::sub_page_size(page_size, ctx.partitions()) as u32,
            page_token: sub.token,
            options: Some(options),
        };
        let (ctx, call) = (&ctx, &part_call);
        async move {
            let r = diff_one(ctx, call, meta, p, one).await?;
            let missing = || {
                QueryError::Internal(format!(
                    "partition {p} answered a diff without its versions"
                ))
            };
            let to = r
                .served
                .first()
                .map(|s| s.read_version)
                .ok_or_else(missing)?;
            let from = r
                .from_versions
                .first()
                .map(|v| v.version)
                .ok_or_else(missing)?;
            Ok(SubPage {
                items: r.entries.into_iter().map(|e| (e.key.clone(), e)).collect(),
                next_token: r.next_page_token,
                served: r.served,
                pins: vec![from, to],
            })
        }
    };
    let g = gather::gather(
        &ctx,
        identity,
        &req.page_token,
        page_size,
        "diff",
        |e: &pb::DiffEntry| e.encoded_len(),
        fetch,
    )
    .await?;
    let entries = g
        .items
        .into_iter()
        .map(|(_, mut e)| {
            if !repr.bytes {
                e.key.clear();
                for v in [&mut e.before, &mut e.after].into_iter().flatten() {
                    v.value.clear();
                }
            }
            e
        })
        .collect();
    Ok(pb::DiffResponse {
        entries,
        next_page_token: g.next_page_token,
        partial: !g.unavailable.is_empty(),
        unavailable: g.unavailable,
        served: g.served,
        from_versions: g
            .pins
            .into_iter()
            .map(|(p, v)| pb::PartitionVersion {
                partition: p.0,
                version: v[0],
            })
            .collect(),
    })
}

/// A diff of one partition, served here or by its owner.
async fn diff_one(
    ctx: &Arc<QueryContext>,
    call: &Call,
    meta: &TableMeta,
    p: Partition,
    req: pb::DiffRequest,
) -> Result<pb::DiffResponse, QueryError> {
    routed(
        ctx,
        call,
        &req.table,
        p,
        |local| diff_here(ctx.clone(), req.clone(), meta, local),
        forward(call, &req, p),
    )
    .await
}

/// Diff of one partition readable here (`req.partition` is `local`'s).
async fn diff_here(
    ctx: Arc<QueryContext>,
    req: pb::DiffRequest,
    meta: &TableMeta,
    local: Local,
) -> Result<pb::DiffResponse, QueryError> {
    let render = Render {
        meta,
        repr: Repr::of(req.options.as_ref()),
    };
    let (range, single) = convert::key_filter(meta, req.keys.clone())?;
    let page_size = ctx.page_size(req.page_size);
    let identity = token::identity(&pb::DiffRequest {
        page_size: 0,
        page_token: Vec::new(),
        options: None,
        ..req.clone()
    });

    let page::Reads {
        jobs,
        unavailable,
        missing,
    } = if req.page_token.is_empty() {
        let Some(from) = req
            .from
            .and_then(|a| a.point)
            .map(|p| convert::at(Some(pb::At { point: Some(p) })))
        else {
            return Err(QueryError::invalid(
                "a diff needs `from`: the earlier point (a version or a time)",
            ));
        };
        let to = convert::at(req.to);
        let targets = targets(&ctx, meta, req.partition, single.as_deref())?;
        check_single(from, &targets, "a diff from")?;
        check_single(to, &targets, "a diff to")?;
        page::first(&ctx, &local, targets, |p, r| {
            let (a, b) = (r.resolve(from)?, r.resolve(to)?);
            if a > b {
                return Err(QueryError::invalid(format!(
                    "`from` resolves to {a} and `to` to {b} in partition {p}: `from` must not be later than `to`"
                )));
            }
            Ok(DiffPart {
                partition: p.0,
                from: a.0,
                to: b.0,
                after: None,
                done: false,
            })
        })?
    } else {
        let c: DiffCursor = token::open(Kind::Diff, identity, &req.page_token)?;
        page::next(&ctx, &local, "diff", c.parts, c.missing)?
    };

    let max_keys = ctx.limits.max_diff_keys;
    let results = blocking(move || {
        let mut out = Vec::with_capacity(jobs.len());
        for (part, reader) in jobs {
            let entries = match &reader {
                Some(r) => {
                    let start = match &part.after {
                        Some(k) => Bound::Excluded(k.clone()),
                        None => range.start.clone(),
                    };
                    let rest = KeyRange {
                        start,
                        end: range.end.clone(),
                    };
                    let (a, b) = (
                        At::Version(Version(part.from)),
                        At::Version(Version(part.to)),
                    );
                    // Both points were checked on the first page; what the
                    // state refuses now is the size.
                    let d = r.diff(a, b, &rest, max_keys).map_err(|e| match e {
                        strata_state::Error::InvalidRequest { location, reason } => {
                            QueryError::TooLarge(format!(
                                "diff of {location}: {reason} (query.max_diff_keys)"
                            ))
                        }
                        e => QueryError::State(e),
                    })?;
                    Some(d)
                }
                None => None,
            };
            out.push((part, reader, entries));
        }
        Ok::<_, QueryError>(out)
    })
    .await?;

    let mut merged = Vec::new();
    for (i, (part, _, entries)) in results.iter().enumerate() {
        for d in entries.iter().flatten() {
            merged.push((i, part.partition, d));
        }
    }
    merged.sort_by(|a, b| a.2.key.cmp(&b.2.key));
    let page::Cut { items, taken, last } = page::cut(
        merged.into_iter().map(|(i, p, d)| {
            let entry = pb::DiffEntry {
                partition: p,
                key: render.key(&d.key),
                key_json: render.key_json(&d.key),
                before: d.before.clone().map(|v| render.entry(v)),
                after: d.after.clone().map(|v| render.entry(v)),
            };
            (d.key.clone(), i, entry)
        }),
        results.len(),
        page_size,
        ctx.reply_budget(),
        "change",
        |_| true,
        |entry| entry.encoded_len(),
    )?;
    let out: Vec<_> = items.into_iter().map(|(_, entry)| entry).collect();
    // The page's last key: every partition resumes after it.
    let after = last.into_iter().flatten().max();

    let mut served = Vec::new();
    let mut from_versions = Vec::new();
    let mut parts = Vec::with_capacity(results.len());
    for (i, (mut part, reader, entries)) in results.into_iter().enumerate() {
        // Pinned in the token: known for every partition, read this page or not.
        from_versions.push(pb::PartitionVersion {
            partition: part.partition,
            version: part.from,
        });
        if let (Some(r), Some(entries)) = (&reader, entries) {
            let _ = r;
            served.push(local.served(&ctx, Version(part.to)));
            // Every entry of this partition up to the page's last key was
            // taken; those after it come on later pages.
            if taken[i] == entries.len() {
                part.done = true;
            } else if let Some(k) = &after {
                part.after = Some(k.clone());
            }
        }
        parts.push(part);
    }
    let more = parts.iter().any(|p| !p.done);
    let next_page_token = if more {
        token::seal(Kind::Diff, identity, &DiffCursor { parts, missing })?
    } else {
        Vec::new()
    };
    Ok(pb::DiffResponse {
        entries: out,
        next_page_token,
        partial: !unavailable.is_empty(),
        unavailable,
        served,
        from_versions,
    })
}
