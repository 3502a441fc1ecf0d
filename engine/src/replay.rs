//! What a replay is and what it reports: the plan (rewind every table of a
//! task to one commit time, seek its input topics back to where they stood
//! then), and its progress until the task's positions pass where they were
//! before it started.
//!
//! The mechanics (planning from lineage, seeking, flagging, cancelling) run
//! on the partition's worker (`runtime/worker/replay.rs`); these are the
//! plain values it hands to the registry, the app and the query service.
//! The semantics are specified in `docs/commit-protocol.md` §7.

use strata_state::{Offset, Partition, RewindPlan, Timestamp};

/// Where a replay stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayState {
    /// A dry run: nothing was changed.
    Planned,
    /// Replaying: records below `until` are processed flagged as replayed.
    Running,
    /// Every input topic passed its `until` position.
    Done,
    /// Cancelled: the inputs were sought forward to `until`.
    Cancelled,
}

/// One input topic's position: the next offset to process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPosition {
    /// The physical input topic.
    pub topic: String,
    /// The next offset to process.
    pub offset: Offset,
}

/// A replay of one partition's input, as planned or as it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayProgress {
    /// The partition (the task) replaying.
    pub partition: Partition,
    /// The table the replay was asked for.
    pub table: String,
    /// Where it stands.
    pub state: ReplayState,
    /// The commit time every table of the task was rewound to.
    pub cut: Timestamp,
    /// Where each input topic was sought back to.
    pub seek: Vec<TopicPosition>,
    /// Where each input topic stood before the replay: records below are
    /// replayed; the replay is done when the task reaches every one.
    pub until: Vec<TopicPosition>,
    /// Where each input topic is now.
    pub position: Vec<TopicPosition>,
    /// Input records processed as replayed.
    pub records: u64,
    /// Input records still to replay: the sum over topics of `until -
    /// position` (offsets, so transaction markers count too).
    pub remaining: u64,
    /// Records per second since it started.
    pub rate: f64,
    /// When it started (for a dry run, when it was planned).
    pub started: Timestamp,
    /// When it ended (done or cancelled).
    pub ended: Option<Timestamp>,
}

/// What a replay request did, or would do, in one partition.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    /// The rewind of every table of the task, in declaration order, with
    /// its name (the chosen table is among them).
    pub rewinds: Vec<(String, RewindPlan)>,
    /// The replay (state `Planned` for a dry run).
    pub progress: ReplayProgress,
}

impl ReplayOutcome {
    /// The rewind of `table`.
    pub fn rewind_of(&self, table: &str) -> Option<&RewindPlan> {
        self.rewinds
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, p)| p)
    }
}
