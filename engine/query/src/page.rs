//! One page of a read over several partitions, for Scan and Diff: which
//! partitions a page served here reads, and cutting the merged items.
//!
//! - The first page reads every partition the request concerns, each
//!   positioned by the read (its points resolved to versions); a partition
//!   that cannot be read is reported and recorded as missing for every
//!   later page. A later page reads the partitions of the page token that
//!   are not done; one that cannot be read now keeps its position and is
//!   reported for this page only.
//! - A page takes items in key order until the page size, the first key a
//!   caller says is not safe to return yet, or the reply budget
//!   (`query.max_message_bytes`); an item too large to fit alone is
//!   RESOURCE_EXHAUSTED.

use strata_proto::v1 as pb;
use strata_state::store::RocksStore;
use strata_state::{Partition, PartitionReader};

use super::context::QueryContext;
use super::error::QueryError;
use super::route::Local;

/// A partition's position in a page token.
pub(super) trait Position {
    /// The partition.
    fn partition(&self) -> Partition;
    /// Nothing left to read.
    fn done(&self) -> bool;
}

/// What a page served here reads.
pub(super) struct Reads<P> {
    /// Per partition, its position and its reader (`None`: not read this
    /// page, being done or unavailable now, but kept in the token).
    pub(super) jobs: Vec<(P, Option<PartitionReader<RocksStore>>)>,
    /// The partitions not read, for the reply.
    pub(super) unavailable: Vec<pb::UnavailablePartition>,
    /// The partitions that could not be read on the first page.
    pub(super) missing: Vec<u32>,
}

/// The first page: every one of `targets`, positioned by `open`.
pub(super) fn first<P>(
    ctx: &QueryContext,
    local: &Local,
    targets: Vec<Partition>,
    mut open: impl FnMut(Partition, &PartitionReader<RocksStore>) -> Result<P, QueryError>,
) -> Result<Reads<P>, QueryError> {
    let mut reads = Reads {
        jobs: Vec::new(),
        unavailable: Vec::new(),
        missing: Vec::new(),
    };
    for p in targets {
        match reader_of(local, p) {
            Ok(r) => {
                let part = open(p, &r)?;
                reads.jobs.push((part, Some(r)));
            }
            Err(e) if e.is_unavailable_partition() => {
                reads.unavailable.push(ctx.unavailable(p, &e));
                reads.missing.push(p.0);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(reads)
}

/// A later page of `what` ("scan", "diff"): the token's `parts` and the
/// partitions `missing` since the first page.
pub(super) fn next<P: Position>(
    ctx: &QueryContext,
    local: &Local,
    what: &str,
    parts: Vec<P>,
    missing: Vec<u32>,
) -> Result<Reads<P>, QueryError> {
    let mut unavailable = Vec::new();
    for &p in &missing {
        unavailable.push(pb::UnavailablePartition {
            partition: p,
            code: tonic::Code::Unavailable as i32,
            message: format!(
                "partition {p} could not be read when the {what} started; start again without a token to include it"
            ),
            ..Default::default()
        });
    }
    let mut jobs = Vec::with_capacity(parts.len());
    for part in parts {
        let p = part.partition();
        if part.done() {
            jobs.push((part, None));
            continue;
        }
        match reader_of(local, p) {
            Ok(r) => jobs.push((part, Some(r))),
            Err(e) if e.is_unavailable_partition() => {
                // Moved or restoring since the last page: keep its
                // position, a later page may read it again.
                unavailable.push(ctx.unavailable(p, &e));
                jobs.push((part, None));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Reads {
        jobs,
        unavailable,
        missing,
    })
}

/// The items a page takes.
pub(super) struct Cut<T> {
    /// The items taken, in key order, each with the index of its source.
    pub(super) items: Vec<(usize, T)>,
    /// Per source, how many of its items were taken.
    pub(super) taken: Vec<usize>,
    /// Per source, the last key taken.
    pub(super) last: Vec<Option<Vec<u8>>>,
}

/// Takes `merged` (key, source index below `sources`, item), in key order,
/// until `page_size` items, the first key that is not `safe`, or the reply
/// `budget` (each item counting `size` plus 8 bytes of framing). An item
/// that cannot fit alone is RESOURCE_EXHAUSTED, naming it "the `what` of
/// key ...".
pub(super) fn cut<T>(
    merged: impl IntoIterator<Item = (Vec<u8>, usize, T)>,
    sources: usize,
    page_size: usize,
    budget: usize,
    what: &str,
    safe: impl Fn(&[u8]) -> bool,
    size: impl Fn(&T) -> usize,
) -> Result<Cut<T>, QueryError> {
    let mut used = 0;
    let mut items = Vec::new();
    let mut taken = vec![0usize; sources];
    let mut last: Vec<Option<Vec<u8>>> = vec![None; sources];
    for (key, i, item) in merged {
        if items.len() == page_size || !safe(&key) {
            break;
        }
        let s = size(&item) + 8;
        if used + s > budget {
            if items.is_empty() {
                return Err(QueryError::TooLarge(format!(
                    "the {what} of key {} is {s} bytes, more than a reply may carry ({budget} bytes, \
                     query.max_message_bytes); ask for representation BYTES or JSON only, or raise the bound",
                    strata_state::codec::display_key(&key)
                )));
            }
            break;
        }
        used += s;
        taken[i] += 1;
        last[i] = Some(key);
        items.push((i, item));
    }
    Ok(Cut { items, taken, last })
}

/// The reader of `p`, which must be the partition routed here.
fn reader_of(local: &Local, p: Partition) -> Result<PartitionReader<RocksStore>, QueryError> {
    if p != local.partition {
        return Err(QueryError::Internal(format!(
            "partition {p} read through the route of partition {}",
            local.partition
        )));
    }
    Ok(local.reader.clone())
}
