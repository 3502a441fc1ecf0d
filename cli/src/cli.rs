//! The command line: global flags and one subcommand per operation, with
//! value parsers for keys, times and points (see `key.rs`, `point.rs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use strata_proto::v1 as pb;

use crate::point::{Point, now_ms, parse_duration, parse_point, parse_time};

/// Query and rewind the versioned tables of any Strata instance over gRPC.
///
/// KEY arguments are JSON ('"alice"', 42, '[1,"a"]'); a bare word that is
/// not JSON is taken as a JSON string (alice = "alice"). TIME is RFC 3339,
/// milliseconds since the epoch, `now`, or a duration back from now (-5m,
/// -1h30m). POINT is a version (a bare integer) or a TIME (epoch
/// milliseconds then written @1714564800000). Exit codes: 0 ok, 1 other,
/// 2 usage, 3 not found, 4 invalid argument, 5 unavailable, 6 auth,
/// 7 failed precondition, 8 incomplete (partial) result.
#[derive(Debug, Parser)]
#[command(name = "strata", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The instance to talk to (any instance of the app).
    #[arg(
        long,
        global = true,
        env = "STRATA_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed an https endpoint's certificate
    /// (default: the system's roots).
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// `table` for people, `json` for programs (one JSON document per line,
    /// one per reply).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Deadline of each call (e.g. 500ms, 10s, 1m).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Accept answers from partitions that are not up to date (restoring);
    /// such answers are marked stale.
    #[arg(long, global = true)]
    pub allow_stale: bool,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document per reply, one per line.
    Json,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the tables.
    Tables,
    /// A table's settings and the state of each partition.
    Describe {
        /// The table.
        table: String,
    },
    /// The value of one key: latest, at a version, or as of a time.
    Get(GetArgs),
    /// A key's versions, newest first.
    History(HistoryArgs),
    /// Keys and values of a table (all partitions), following pages.
    Scan(ScanArgs),
    /// The keys whose values differ between two points.
    Diff(DiffArgs),
    /// Follow a table's committed changes (Ctrl-C stops).
    Tail(TailArgs),
    /// Bring a table, a partition or a key range back to an earlier state.
    Rewind(RewindArgs),
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The table.
    pub table: String,
    /// The key (JSON, or a bare word as a JSON string).
    #[arg(value_parser = key_arg)]
    pub key: String,
    /// Read at this version of the key's partition.
    #[arg(long, conflicts_with = "as_of")]
    pub at_version: Option<u64>,
    /// Read as of this TIME.
    #[arg(long, value_parser = time_arg, allow_hyphen_values = true)]
    pub as_of: Option<u64>,
    /// Read this partition only, instead of the one the key's hash names
    /// (for a key its producer placed explicitly). Without it, a key whose
    /// partition the server cannot vouch for is looked for in every one.
    #[arg(long)]
    pub partition: Option<u32>,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The table.
    pub table: String,
    /// The key (JSON, or a bare word as a JSON string).
    #[arg(value_parser = key_arg)]
    pub key: String,
    /// Oldest POINT to include (a version, or a TIME).
    #[arg(long, value_parser = point_arg, allow_hyphen_values = true)]
    pub from: Option<Point>,
    /// Newest POINT to include (a version, or a TIME).
    #[arg(long, value_parser = point_arg, allow_hyphen_values = true)]
    pub to: Option<Point>,
    /// Oldest first.
    #[arg(long)]
    pub asc: bool,
    /// At most this many versions (pages are followed up to it).
    #[arg(long)]
    pub limit: Option<u64>,
    /// Read this partition only (see `get --partition`).
    #[arg(long)]
    pub partition: Option<u32>,
}

/// Which keys: a prefix or a range.
#[derive(Debug, Args, Default)]
pub struct KeysArgs {
    /// Keys whose encoded bytes start with this text's UTF-8 bytes (works
    /// for string keys).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// First key of the range (inclusive; JSON, or a bare word).
    #[arg(long, value_parser = key_arg)]
    pub from: Option<String>,
    /// End of the range (exclusive; JSON, or a bare word).
    #[arg(long, value_parser = key_arg)]
    pub to: Option<String>,
}

/// `scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The table.
    pub table: String,
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Read as of this TIME (default: latest).
    #[arg(long, value_parser = time_arg, allow_hyphen_values = true, conflicts_with = "at_version")]
    pub as_of: Option<u64>,
    /// Read at this version (needs --partition).
    #[arg(long, requires = "partition")]
    pub at_version: Option<u64>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// At most this many keys in all.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keys per page requested (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
}

/// `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The table.
    pub table: String,
    /// The earlier POINT (a version, which needs --partition, or a TIME).
    #[arg(long, value_parser = point_arg, allow_hyphen_values = true)]
    pub from: Point,
    /// The later POINT (default: latest).
    #[arg(long, value_parser = point_arg, allow_hyphen_values = true)]
    pub to: Option<Point>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only keys whose encoded bytes start with this text's UTF-8 bytes.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Changes per page requested (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
}

/// `tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The table.
    pub table: String,
    /// Start with the changes committed at or after this TIME (default:
    /// changes from now on).
    #[arg(long, value_parser = time_arg, allow_hyphen_values = true, conflicts_with = "after")]
    pub from_time: Option<u64>,
    /// Resume after this cursor (the JSON a previous `tail` printed).
    #[arg(long, value_parser = crate::positions::parse_cursor)]
    pub after: Option<pb::Cursor>,
    /// Only this key (JSON, or a bare word).
    #[arg(long, value_parser = key_arg)]
    pub key: Option<String>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
}

/// `rewind`.
#[derive(Debug, Args)]
pub struct RewindArgs {
    /// The table.
    pub table: String,
    /// Go back to this version (needs --partition or --key).
    #[arg(long, required_unless_present_any = ["to_time", "cancel"], conflicts_with = "to_time")]
    pub to_version: Option<u64>,
    /// Go back to this TIME (every partition concerned).
    #[arg(long, value_parser = time_arg, allow_hyphen_values = true)]
    pub to_time: Option<u64>,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only this key (JSON, or a bare word).
    #[arg(long, value_parser = key_arg, conflicts_with_all = ["prefix", "from", "to"])]
    pub key: Option<String>,
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Plan only: show what would change, commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply only if these partitions are still at these latest versions
    /// (PARTITION:VERSION,...; a dry run prints them).
    #[arg(long, value_delimiter = ',', value_parser = crate::positions::parse_partition_version)]
    pub expect_latest: Vec<pb::PartitionVersion>,
    /// Apply without asking.
    #[arg(long, short)]
    pub yes: bool,
    /// Most changes listed per partition (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub max_listed: u32,
    /// Also replay: rewind every table of each partition's task to the
    /// target's commit time, seek the inputs back to where they stood then
    /// and reprocess them with the code now running (whole partitions: no
    /// key filter). Shows the seek offsets.
    #[arg(long, conflicts_with_all = ["key", "prefix", "from", "to"])]
    pub replay: bool,
    /// Cancel the replays running in the table's partitions (or
    /// --partition): their inputs are sought forward to where they stood
    /// before the replay.
    #[arg(long, conflicts_with_all = ["to_version", "to_time", "replay", "key", "prefix", "from", "to", "dry_run", "expect_latest"])]
    pub cancel: bool,
}

fn key_arg(s: &str) -> Result<String, String> {
    crate::key::key_json(s)
}

fn time_arg(s: &str) -> Result<u64, String> {
    parse_time(s, now_ms())
}

fn point_arg(s: &str) -> Result<Point, String> {
    parse_point(s, now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_keys_and_points() {
        let c = Cli::try_parse_from(["strata", "get", "t", "alice", "--at-version", "3"]).unwrap();
        match c.command {
            Command::Get(g) => assert_eq!((g.key.as_str(), g.at_version), ("\"alice\"", Some(3))),
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "strata",
                "get",
                "t",
                "k",
                "--at-version",
                "3",
                "--as-of",
                "now"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["strata", "get", "t", "{bad"]).is_err());
        assert!(
            Cli::try_parse_from(["strata", "rewind", "t"]).is_err(),
            "a target is required"
        );
        assert!(Cli::try_parse_from(["strata", "scan", "t", "--at-version", "3"]).is_err());
    }
}
