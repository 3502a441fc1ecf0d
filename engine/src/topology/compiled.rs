//! A topology compiled for running: validated, and its graph unpacked once
//! with physical topic names. The runtime ([`crate::App`]) and the
//! [`crate::TestDriver`] both run this form; neither reads the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{ChangeFn, OnError, SourceFn, TableCodecs, TableOptions, TimerSpec, Topology, lock};
use crate::Result;
use crate::partitioner::RouteCheck;
use crate::task::{SourceMap, TaskSource};

/// One stream reading an input topic.
#[derive(Clone)]
pub(crate) struct CompiledSource {
    pub run: SourceFn,
    pub on_error: OnError,
}

/// A table, as tasks open it and the query service reads it.
#[derive(Clone)]
pub(crate) struct CompiledTable {
    pub name: String,
    pub options: TableOptions,
    pub codecs: TableCodecs,
    /// Feeds the table's downstream with a change made by a rewind.
    pub emit_change: ChangeFn,
    /// The logical input topic the table is co-partitioned with.
    pub topic: String,
    /// Its physical name.
    pub input_topic: String,
}

/// A topology ready to run.
#[derive(Clone)]
pub(crate) struct Compiled {
    /// Physical input topic -> every stream reading it.
    pub sources: BTreeMap<String, Vec<CompiledSource>>,
    /// The tables, in declaration order (a table's index is its
    /// [`super::TableId`]).
    pub tables: Vec<CompiledTable>,
    pub timers: Vec<TimerSpec>,
    /// Physical names of the internal (repartition) topics.
    pub internal: BTreeSet<String>,
}

impl Topology {
    /// Validates the topology ([`Topology::validate`]) and unpacks its
    /// graph once, naming topics with `physical` (the app's mapping of
    /// logical names to physical ones; the identity in the test driver).
    pub(crate) fn compile(&self, physical: impl Fn(&str) -> String) -> Result<Compiled> {
        self.validate()?;
        let g = lock(&self.graph);
        let mut sources: BTreeMap<String, Vec<CompiledSource>> = BTreeMap::new();
        let mut internal = BTreeSet::new();
        for s in &g.sources {
            let topic = physical(&s.topic);
            if s.internal {
                internal.insert(topic.clone());
            }
            sources.entry(topic).or_default().push(CompiledSource {
                run: s.run.clone(),
                on_error: s.on_error.clone(),
            });
        }
        let tables = g
            .tables
            .iter()
            .map(|t| CompiledTable {
                name: t.name.clone(),
                options: t.options.clone(),
                codecs: t.codecs.clone(),
                emit_change: t.emit_change.clone(),
                topic: t.topic.clone(),
                input_topic: physical(&t.topic),
            })
            .collect();
        Ok(Compiled {
            sources,
            tables,
            timers: g.timers.clone(),
            internal,
        })
    }
}

impl Compiled {
    /// The tasks' sources, each topic's with its partitioner check
    /// (`route`; `None` where records are placed by the caller).
    pub(crate) fn task_sources(
        &self,
        mut route: impl FnMut(&str) -> Option<Arc<RouteCheck>>,
    ) -> SourceMap {
        Arc::new(
            self.sources
                .iter()
                .map(|(topic, list)| {
                    let r = route(topic);
                    let list = list
                        .iter()
                        .map(|s| TaskSource {
                            run: s.run.clone(),
                            on_error: s.on_error.clone(),
                            route: r.clone(),
                        })
                        .collect();
                    (topic.clone(), list)
                })
                .collect(),
        )
    }

    /// Each table's name and options, in order.
    pub(crate) fn table_options(&self) -> Vec<(String, TableOptions)> {
        self.tables
            .iter()
            .map(|t| (t.name.clone(), t.options.clone()))
            .collect()
    }

    /// Each table's rewind emitter, in order.
    pub(crate) fn emitters(&self) -> Vec<ChangeFn> {
        self.tables.iter().map(|t| t.emit_change.clone()).collect()
    }
}
