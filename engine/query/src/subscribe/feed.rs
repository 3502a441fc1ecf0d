//! What a feed's parts share: where a partition's feed starts, what a
//! follower tells the merger, the feed's settings, why a follower moves.

use strata_proto::v1 as pb;
use strata_state::KeyRange;
use tonic::Status;

/// Where a partition's feed starts.
#[derive(Clone, Copy, Debug)]
pub(super) enum StartAt {
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
pub(super) enum Event {
    Batch {
        partition: u32,
        changes: Vec<pb::Change>,
        pos: u64,
        caught_up: bool,
    },
    Failed(Status),
}

/// The settings every follower of one feed shares.
pub(super) struct Spec {
    pub(super) table: String,
    pub(super) keys: Option<pb::KeyFilter>,
    pub(super) range: KeyRange,
    pub(super) max_batch: usize,
    pub(super) options: Option<pb::RequestOptions>,
}

/// Why a follower stopped serving a partition from one place.
pub(super) enum Stop {
    /// The partition is no longer there: route again.
    Moved,
    /// The client went away.
    Closed,
}
