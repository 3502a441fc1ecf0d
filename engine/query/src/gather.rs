//! Scatter-gather over every partition of a table, for Scan and Diff.
//!
//! Each page asks every partition still in play for one page of its own
//! (a single-partition request, served here or forwarded to the owner),
//! merges the answers in encoded key order and cuts the merged page at the
//! page size and the reply budget. The token records, per partition, the
//! exact single-partition request to send next:
//!
//! - all of its page was taken: the same request again with the page token
//!   its answer gave (that token pins the versions it read);
//! - part of it was taken: a request that starts after the last key taken,
//!   at the versions its first answer read (`pins`), without a token.
//!
//! So every page reads the state the first page read, wherever the
//! partition is served from, and every key appears in exactly one page.
//!
//! A partition that cannot be read when the scan starts is reported and
//! stays missing on every later page (the reply is partial: start again to
//! include it). A partition that cannot be read on a later page keeps its
//! position and is reported for that page; a later page reads it again.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use strata_proto::v1 as pb;
use strata_state::Partition;

use super::context::QueryContext;
use super::error::QueryError;
use super::page;
use super::token::{self, Kind};

/// A lower key bound (serializable `Bound`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Start {
    Unbounded,
    Included(Vec<u8>),
    Excluded(Vec<u8>),
}

impl Start {
    pub(crate) fn of(b: &Bound<Vec<u8>>) -> Start {
        match b {
            Bound::Unbounded => Start::Unbounded,
            Bound::Included(k) => Start::Included(k.clone()),
            Bound::Excluded(k) => Start::Excluded(k.clone()),
        }
    }

    pub(crate) fn bound(&self) -> Bound<Vec<u8>> {
        match self {
            Start::Unbounded => Bound::Unbounded,
            Start::Included(k) => Bound::Included(k.clone()),
            Start::Excluded(k) => Bound::Excluded(k.clone()),
        }
    }
}

/// The single-partition request to send for a partition's next page.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sub {
    /// Start after this bound instead of the request's own start.
    pub start: Option<Start>,
    /// Read at these versions instead of the request's points (Scan: the
    /// read version; Diff: from and to).
    pub pins: Option<Vec<u64>>,
    /// The page token the partition's last answer gave.
    pub token: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum State {
    Next(Sub),
    Done,
    /// Could not be read on the first page.
    Missing,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    parts: Vec<(u32, State)>,
    /// The versions each partition read at, once known.
    pins: BTreeMap<u32, Vec<u64>>,
}

/// One partition's answer to a single-partition request.
pub(crate) struct SubPage<I> {
    /// Its items with their encoded keys, in key order.
    pub items: Vec<(Vec<u8>, I)>,
    /// Its next page token (empty: it has no more).
    pub next_token: Vec<u8>,
    /// Who served it.
    pub served: Vec<pb::Served>,
    /// The versions it read at (see [`Sub::pins`]).
    pub pins: Vec<u64>,
}

/// A merged page.
pub(crate) struct Gathered<I> {
    pub items: Vec<(Partition, I)>,
    pub next_page_token: Vec<u8>,
    pub unavailable: Vec<pb::UnavailablePartition>,
    pub served: Vec<pb::Served>,
    /// The versions each partition read at, for every partition read on
    /// this page or an earlier one.
    pub pins: Vec<(Partition, Vec<u64>)>,
}

/// One page of a scatter-gather over all `ctx.partitions()` partitions.
/// `fetch` asks one partition for one page; `size` is an item's share of
/// the reply; `what` names the operation in messages.
pub(crate) async fn gather<I, F, Fut>(
    ctx: &QueryContext,
    identity: u32,
    page_token: &[u8],
    page_size: usize,
    what: &str,
    size: impl Fn(&I) -> usize,
    fetch: F,
) -> Result<Gathered<I>, QueryError>
where
    F: Fn(Partition, Sub) -> Fut,
    Fut: Future<Output = Result<SubPage<I>, QueryError>>,
{
    let first = page_token.is_empty();
    let (mut parts, mut pinned) = if first {
        let parts: Vec<(u32, State)> = (0..ctx.partitions())
            .map(|p| (p, State::Next(Sub::default())))
            .collect();
        (parts, BTreeMap::new())
    } else {
        let c = token::open::<Cursor>(Kind::Gather, identity, page_token)?;
        (c.parts, c.pins)
    };
    let mut unavailable = Vec::new();
    for (p, s) in &parts {
        if matches!(s, State::Missing) {
            unavailable.push(pb::UnavailablePartition {
                partition: *p,
                code: tonic::Code::Unavailable as i32,
                message: format!(
                    "partition {p} could not be read when the {what} started; start again without a token to \
                     include it"
                ),
                ..Default::default()
            });
        }
    }

    // Ask every partition in play at once.
    let asks: Vec<(usize, Sub)> = parts
        .iter()
        .enumerate()
        .filter_map(|(i, (_, s))| match s {
            State::Next(sub) => Some((i, sub.clone())),
            _ => None,
        })
        .collect();
    let answers = futures_util::future::join_all(
        asks.iter()
            .map(|(i, sub)| fetch(Partition(parts[*i].0), sub.clone())),
    )
    .await;

    let mut pages: Vec<(usize, Sub, SubPage<I>)> = Vec::new();
    for ((i, sub), answer) in asks.into_iter().zip(answers) {
        let p = Partition(parts[i].0);
        match answer {
            Ok(page) => pages.push((i, sub, page)),
            Err(e) if e.is_unavailable_partition() => {
                unavailable.push(ctx.unavailable(p, &e));
                if first {
                    parts[i].1 = State::Missing;
                }
            }
            Err(e) => return Err(e),
        }
    }

    // The frontier: a partition that has more than it sent may still hold
    // any key after the last one it sent (or after where it started, if it
    // sent none), so nothing past the smallest such point may be taken
    // now, or a later page would return a key smaller than this one's.
    // `(key, inclusive)`: keys up to `key` (and `key` itself if inclusive)
    // are safe; `None`: everything is.
    let mut frontier: Option<(Vec<u8>, bool)> = None;
    for (_, sub, page) in &pages {
        if page.next_token.is_empty() {
            continue;
        }
        let point = match (page.items.last(), &sub.start) {
            (Some((k, _)), _) => (k.clone(), true),
            (None, Some(Start::Excluded(k))) => (k.clone(), true),
            (None, Some(Start::Included(k))) => (k.clone(), false),
            // Nothing sent, from the range's own start: nothing is safe.
            (None, Some(Start::Unbounded) | None) => (Vec::new(), false),
        };
        let tighter = match &frontier {
            None => true,
            Some((f, inc)) => point.0 < *f || (point.0 == *f && *inc && !point.1),
        };
        if tighter {
            frontier = Some(point);
        }
    }
    let safe = |key: &[u8]| match &frontier {
        None => true,
        Some((f, true)) => key <= f.as_slice(),
        Some((f, false)) => key < f.as_slice(),
    };

    // Merge in key order, within the page size, the frontier and the reply
    // budget.
    let mut merged: Vec<(Vec<u8>, usize, I)> = Vec::new();
    let mut lens = Vec::with_capacity(pages.len());
    let mut rest = Vec::with_capacity(pages.len());
    for (j, (i, sub, page)) in pages.into_iter().enumerate() {
        lens.push(page.items.len());
        merged.extend(page.items.into_iter().map(|(k, item)| (k, j, item)));
        rest.push((i, sub, page.next_token, page.served, page.pins));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let page::Cut {
        items,
        taken,
        mut last,
    } = page::cut(
        merged,
        rest.len(),
        page_size,
        ctx.reply_budget(),
        "item",
        safe,
        size,
    )?;
    let items: Vec<_> = items
        .into_iter()
        .map(|(j, item)| (Partition(parts[rest[j].0].0), item))
        .collect();

    // Where each partition read goes on.
    let mut served = Vec::new();
    for (j, (i, sub, next_token, s, read_at)) in rest.into_iter().enumerate() {
        served.extend(s);
        pinned.insert(parts[i].0, read_at.clone());
        parts[i].1 = if taken[j] == 0 && lens[j] > 0 {
            // Nothing of its page fitted: ask for the same page again.
            State::Next(sub)
        } else if taken[j] == lens[j] {
            if next_token.is_empty() {
                State::Done
            } else {
                State::Next(Sub {
                    token: next_token,
                    ..sub
                })
            }
        } else {
            match last[j].take() {
                // Part of its page fitted: go on after the last item taken.
                Some(k) => State::Next(Sub {
                    start: Some(Start::Excluded(k)),
                    pins: Some(read_at),
                    token: Vec::new(),
                }),
                // (`cut` names the last key of every partition it took from.)
                None => State::Next(sub),
            }
        };
    }
    let more = parts.iter().any(|(_, s)| matches!(s, State::Next(_)));
    let next_page_token = if more {
        token::seal(
            Kind::Gather,
            identity,
            &Cursor {
                parts,
                pins: pinned.clone(),
            },
        )?
    } else {
        Vec::new()
    };
    let pins = pinned.into_iter().map(|(p, v)| (Partition(p), v)).collect();
    Ok(Gathered {
        items,
        next_page_token,
        unavailable,
        served,
        pins,
    })
}

/// The key filter of a partition's next request: the request's own, or a
/// range from `start` to the request's end.
pub(crate) fn sub_keys(
    keys: Option<pb::KeyFilter>,
    start: Option<&Start>,
    end: &Bound<Vec<u8>>,
) -> Option<pb::KeyFilter> {
    let Some(start) = start else {
        return keys;
    };
    let bound = |b: Bound<Vec<u8>>| match b {
        Bound::Unbounded => None,
        Bound::Included(k) => Some(pb::KeyBound {
            key_ref: Some(pb::key_bound::KeyRef::Key(k)),
            inclusive: Some(true),
        }),
        Bound::Excluded(k) => Some(pb::KeyBound {
            key_ref: Some(pb::key_bound::KeyRef::Key(k)),
            inclusive: Some(false),
        }),
    };
    Some(pb::KeyFilter {
        filter: Some(pb::key_filter::Filter::Range(pb::KeyRange {
            start: bound(start.bound()),
            end: bound(end.clone()),
        })),
    })
}

/// How many items to ask each of `partitions` partitions for, for a merged
/// page of `page_size`: twice an even share (keys rarely spread evenly), at
/// least 16, at most the page. Asking each for a whole page would read
/// about `partitions` keys per key returned; a smaller share is kept in
/// order by the frontier (see `gather`), at the price of a shorter page
/// when the page's keys crowd into one partition.
pub(crate) fn sub_page_size(page_size: usize, partitions: u32) -> usize {
    (page_size.div_ceil(partitions.max(1) as usize) * 2)
        .max(16)
        .min(page_size)
}

/// The representation sub-requests ask for: always with key bytes, which
/// the merge orders by.
pub(crate) fn sub_options(options: Option<&pb::RequestOptions>) -> pb::RequestOptions {
    let mut o = options.cloned().unwrap_or_default();
    if o.representation() == pb::Representation::Json {
        o.set_representation(pb::Representation::Both);
    }
    o
}
