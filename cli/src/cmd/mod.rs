//! The commands, one module per family, and what they share: key filters
//! and points turned into request messages.

mod read;
mod rewind;
mod scan;
mod tables;
mod tail;

use strata_proto::v1 as pb;

use crate::cli::{Cli, Command, KeysArgs};
use crate::conn::Conn;
use crate::error::CliError;
use crate::point::Point;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let conn = Conn::open(&cli.global).await?;
    let out = cli.global.output;
    match cli.command {
        Command::Tables => tables::tables(&conn, out).await,
        Command::Describe { table } => tables::describe(&conn, out, table).await,
        Command::Get(a) => read::get(&conn, out, a).await,
        Command::History(a) => read::history(&conn, out, a).await,
        Command::Scan(a) => scan::scan(&conn, out, a).await,
        Command::Diff(a) => scan::diff(&conn, out, a).await,
        Command::Tail(a) => tail::tail(&conn, out, a).await,
        Command::Rewind(a) => rewind::rewind(&conn, out, a).await,
    }
}

/// A key filter from `--prefix` or `--from`/`--to` (keys already JSON).
fn key_filter(k: &KeysArgs) -> Option<pb::KeyFilter> {
    let bound = |key: &Option<String>| {
        key.as_ref().map(|j| pb::KeyBound {
            key_ref: Some(pb::key_bound::KeyRef::KeyJson(j.clone())),
            inclusive: None,
        })
    };
    let filter = if let Some(p) = &k.prefix {
        Some(pb::key_filter::Filter::PrefixUtf8(p.clone()))
    } else if k.from.is_some() || k.to.is_some() {
        Some(pb::key_filter::Filter::Range(pb::KeyRange {
            start: bound(&k.from),
            end: bound(&k.to),
        }))
    } else {
        None
    };
    filter.map(|f| pb::KeyFilter { filter: Some(f) })
}

/// A read point as `At`.
fn at(p: Point) -> pb::At {
    pb::At {
        point: Some(match p {
            Point::Version(v) => pb::at::Point::Version(v),
            Point::TimeMs(t) => pb::at::Point::TimeMs(t),
        }),
    }
}

/// A history bound as `Point`.
fn bound(p: Point) -> pb::Point {
    pb::Point {
        point: Some(match p {
            Point::Version(v) => pb::point::Point::Version(v),
            Point::TimeMs(t) => pb::point::Point::TimeMs(t),
        }),
    }
}
