//! Diff: the keys whose values differ between two points, gathered from
//! the partitions owned here and merged in key order, in pages.
//!
//! The first page resolves both points in every partition and pins them in
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
use strata_state::store::RocksStore;
use strata_state::{At, KeyRange, Partition, PartitionReader, Version};

use super::context::{QueryContext, blocking};
use super::convert::{self, Render, Repr};
use super::error::QueryError;
use super::scan::{check_single, targets};
use super::token::{self, Kind};

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

/// A diff's page token body.
#[derive(Serialize, Deserialize)]
struct DiffCursor {
    parts: Vec<DiffPart>,
    /// Partitions that could not be read on the first page.
    missing: Vec<u32>,
}

/// Diff: one page of changed keys.
pub(crate) async fn diff(
    ctx: Arc<QueryContext>,
    req: pb::DiffRequest,
) -> Result<pb::DiffResponse, QueryError> {
    let meta = ctx.table(&req.table)?;
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

    let mut unavailable = Vec::new();
    let mut jobs: Vec<(DiffPart, Option<PartitionReader<RocksStore>>)> = Vec::new();
    let missing = if req.page_token.is_empty() {
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
        let mut missing = Vec::new();
        for p in targets {
            match ctx.reader(&meta.name, p) {
                Ok(r) => {
                    let (a, b) = (r.resolve(from)?, r.resolve(to)?);
                    if a > b {
                        return Err(QueryError::invalid(format!(
                            "`from` resolves to {a} and `to` to {b} in partition {p}: `from` must not be later than `to`"
                        )));
                    }
                    jobs.push((
                        DiffPart {
                            partition: p.0,
                            from: a.0,
                            to: b.0,
                            after: None,
                            done: false,
                        },
                        Some(r),
                    ));
                }
                Err(e) if e.is_unavailable_partition() => {
                    unavailable.push(ctx.unavailable(p, &e));
                    missing.push(p.0);
                }
                Err(e) => return Err(e),
            }
        }
        missing
    } else {
        let c: DiffCursor = token::open(Kind::Diff, identity, &req.page_token)?;
        for &p in &c.missing {
            unavailable.push(pb::UnavailablePartition {
                partition: p,
                code: tonic::Code::Unavailable as i32,
                message: format!(
                    "partition {p} could not be read when the diff started; start again without a token to include it"
                ),
                ..Default::default()
            });
        }
        for part in c.parts {
            if part.done {
                jobs.push((part, None));
                continue;
            }
            match ctx.reader(&meta.name, Partition(part.partition)) {
                Ok(r) => jobs.push((part, Some(r))),
                Err(e) if e.is_unavailable_partition() => {
                    unavailable.push(ctx.unavailable(Partition(part.partition), &e));
                    jobs.push((part, None));
                }
                Err(e) => return Err(e),
            }
        }
        c.missing
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
    let budget = ctx.reply_budget();
    let mut used = 0;
    let mut out = Vec::new();
    let mut after = None;
    let mut taken = vec![0usize; results.len()];
    for (i, p, d) in merged {
        if out.len() == page_size {
            break;
        }
        let entry = pb::DiffEntry {
            partition: p,
            key: render.key(&d.key),
            key_json: render.key_json(&d.key),
            before: d.before.clone().map(|v| render.entry(v)),
            after: d.after.clone().map(|v| render.entry(v)),
        };
        let size = entry.encoded_len() + 8;
        if used + size > budget {
            if out.is_empty() {
                return Err(QueryError::TooLarge(format!(
                    "the change of key {} is {size} bytes, more than a reply may carry ({budget} bytes, \
                     query.max_message_bytes); ask for representation BYTES or JSON only, or raise the bound",
                    strata_state::codec::display_key(&d.key)
                )));
            }
            break;
        }
        used += size;
        after = Some(d.key.clone());
        taken[i] += 1;
        out.push(entry);
    }

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
            served.push(ctx.served(Partition(part.partition), r, Version(part.to)));
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
