//! The graph a topology builds: sources, the operators between them
//! (as `Sinks`), timers and tables, shared by every handle while it is
//! built and read-only once it runs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use super::{TableSpec, TimerSpec};
use crate::Result;
use crate::context::Ctx;

/// What to do with a record that cannot be decoded or whose processing
/// fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Log it and go on.
    Skip,
    /// Send it, with the error in headers, to the app's dead-letter topic
    /// (`<application id>-dlq`) or the named one; then go on.
    #[default]
    DeadLetter,
    /// Send it to this dead-letter topic.
    DeadLetterTo(String),
    /// Stop the app with the error.
    Stop,
}

/// A downstream operator of a stream of `(K, V)`.
pub(crate) type Sink<K, V> = Arc<dyn Fn(&mut Ctx<'_>, K, V) -> Result<(), String> + Send + Sync>;

/// The downstream operators of one stream; frozen once the app runs.
pub(crate) struct Sinks<K, V> {
    list: RwLock<Vec<Sink<K, V>>>,
}

impl<K: Clone, V: Clone> Sinks<K, V> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Sinks {
            list: RwLock::new(Vec::new()),
        })
    }

    pub(crate) fn add(&self, s: Sink<K, V>) {
        if let Ok(mut l) = self.list.write() {
            l.push(s);
        }
    }

    /// Sends one record to every downstream operator.
    pub(crate) fn emit(&self, ctx: &mut Ctx<'_>, k: K, v: V) -> Result<(), String> {
        let list = self
            .list
            .read()
            .map_err(|_| "topology lock poisoned".to_string())?;
        match list.len() {
            0 => Ok(()),
            1 => list[0](ctx, k, v),
            n => {
                for s in &list[..n - 1] {
                    s(ctx, k.clone(), v.clone())?;
                }
                list[n - 1](ctx, k, v)
            }
        }
    }
}

/// A source: decodes a raw record and feeds its stream.
pub(crate) type SourceFn = Arc<
    dyn Fn(&mut Ctx<'_>, Option<&[u8]>, Option<&[u8]>) -> Result<(), RecordError> + Send + Sync,
>;

/// Why a record failed.
#[derive(Debug, Clone)]
pub(crate) enum RecordError {
    /// Its key or value could not be decoded.
    Decode(String),
    /// An operator failed.
    Operator(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Decode(e) => write!(f, "undecodable: {e}"),
            RecordError::Operator(e) => write!(f, "operator failed: {e}"),
        }
    }
}

pub(crate) struct SourceSpec {
    pub topic: String,
    pub on_error: OnError,
    pub run: SourceFn,
    /// An internal (repartition) topic the app creates itself.
    pub internal: bool,
}

/// Prefix of the logical names of repartition topics; the physical name
/// is `<application id>-<name>-repartition`.
pub const REPARTITION_PREFIX: &str = "__repartition-";

#[derive(Default)]
pub(crate) struct Graph {
    pub sources: Vec<SourceSpec>,
    pub timers: Vec<TimerSpec>,
    pub tables: Vec<TableSpec>,
    pub outputs: BTreeSet<String>,
    pub next_op: usize,
}

pub(crate) fn lock(g: &Mutex<Graph>) -> std::sync::MutexGuard<'_, Graph> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}
