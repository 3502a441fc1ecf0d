//! What can go wrong in a command, how it is told to the user (`error:
//! <CODE>: <message>` on stderr, then `hint:` lines), and the process exit
//! code for each case. The exit codes are part of the CLI's contract
//! (docs/cli.md): scripts branch on them.

use std::fmt;

use prost::Message;
use strata_proto::v1 as pb;
use tonic::Code;

use crate::point::format_time;

/// The trailer that carries an encoded `ErrorDetail` next to a status.
const DETAIL_TRAILER: &str = "strata-error-detail-bin";

/// Process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// Any other failure (internal, unimplemented, aborted, ...).
    Other = 1,
    /// The command line is wrong (clap uses 2 as well).
    Usage = 2,
    /// NOT_FOUND: no such table.
    NotFound = 3,
    /// INVALID_ARGUMENT or OUT_OF_RANGE: the server refused the arguments.
    InvalidArgument = 4,
    /// UNAVAILABLE, DEADLINE_EXCEEDED, or no connection at all.
    Unavailable = 5,
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    Auth = 6,
    /// FAILED_PRECONDITION: a rewind's `--expect-latest` no longer holds.
    FailedPrecondition = 7,
    /// The reply was printed but is incomplete: a partial scan or diff, or
    /// a rewind that failed in some partition.
    Incomplete = 8,
}

/// A command's failure.
#[derive(Debug)]
pub enum CliError {
    /// Bad command line, found after clap's own checks.
    Usage(String),
    /// Could not connect to the endpoint at all.
    Connect { endpoint: String, cause: String },
    /// The server answered with an error status.
    Status {
        status: tonic::Status,
        endpoint: String,
    },
    /// The output was printed but misses something (said on stderr already).
    Incomplete(String),
    /// Anything else.
    Other(String),
}

impl CliError {
    /// The exit code this failure ends the process with.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::Connect { .. } => Exit::Unavailable,
            CliError::Status { status, .. } => exit_for(status.code()),
            CliError::Incomplete(_) => Exit::Incomplete,
            CliError::Other(_) => Exit::Other,
        }
    }

    /// Hints: what to check or do next.
    fn hints(&self) -> Vec<String> {
        match self {
            CliError::Usage(_) | CliError::Incomplete(_) | CliError::Other(_) => vec![],
            CliError::Connect { endpoint, .. } => vec![
                format!("is a Strata instance serving gRPC at {endpoint}? (AppConfig::grpc_listen)"),
                "check --endpoint or STRATA_ENDPOINT; use https:// (and --ca-cert) for a TLS server"
                    .into(),
            ],
            CliError::Status { status, endpoint } => status_hints(status, endpoint),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "error: {m}")?,
            CliError::Connect { endpoint, cause } => write!(
                f,
                "error: UNAVAILABLE: cannot connect to {endpoint}: {cause}"
            )?,
            CliError::Status { status, .. } => write!(
                f,
                "error: {}: {}",
                code_name(status.code()),
                status.message()
            )?,
            CliError::Incomplete(m) => write!(f, "error: INCOMPLETE: {m}")?,
            CliError::Other(m) => write!(f, "error: {m}")?,
        }
        for h in self.hints() {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

/// The exit code for a status code.
pub fn exit_for(code: Code) -> Exit {
    match code {
        Code::Ok => Exit::Ok,
        Code::NotFound => Exit::NotFound,
        Code::InvalidArgument | Code::OutOfRange => Exit::InvalidArgument,
        Code::Unavailable | Code::DeadlineExceeded => Exit::Unavailable,
        Code::Unauthenticated | Code::PermissionDenied => Exit::Auth,
        Code::FailedPrecondition => Exit::FailedPrecondition,
        _ => Exit::Other,
    }
}

/// The canonical name of a status code, as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `ErrorDetail` a status carries in its trailer, if any.
fn detail(status: &tonic::Status) -> Option<pb::ErrorDetail> {
    let bytes = status.metadata().get_bin(DETAIL_TRAILER)?.to_bytes().ok()?;
    pb::ErrorDetail::decode(bytes).ok()
}

fn status_hints(status: &tonic::Status, endpoint: &str) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(d) = detail(status) {
        if let Some(v) = d.latest_version {
            hints.push(format!("the partition's latest version is {v}"));
        }
        match d.oldest_readable.and_then(|p| p.point) {
            Some(pb::point::Point::Version(v)) => {
                hints.push(format!("the oldest readable version is {v}"))
            }
            Some(pb::point::Point::TimeMs(t)) => {
                hints.push(format!("the oldest readable time is {}", format_time(t)))
            }
            None => {}
        }
        if let Some(o) = d.owner {
            hints.push(format!("partition owner: {} at {}", o.id, o.endpoint));
        }
        if let Some(r) = d.restoring {
            let remaining = r
                .remaining
                .map(|n| format!(", {n} to go"))
                .unwrap_or_default();
            hints.push(format!(
                "restoring: {} changelog records read at {:.0}/s{remaining}; \
                 retry later, or pass --allow-stale to read it as it is",
                r.records, r.rate
            ));
        }
        if d.retry_after_ms > 0 {
            hints.push(format!("retry in {} ms", d.retry_after_ms));
        }
    }
    match status.code() {
        Code::NotFound => hints.push("`strata tables` lists the tables".into()),
        Code::Unauthenticated => {
            hints.push("pass --token or set STRATA_TOKEN to the server's token".into())
        }
        Code::PermissionDenied => hints.push("rewind needs the admin token (--token)".into()),
        Code::DeadlineExceeded => hints.push("raise --timeout, or narrow the request".into()),
        Code::ResourceExhausted => {
            hints.push("use a smaller --page-size or narrow the key range".into())
        }
        Code::Unimplemented => {
            hints.push(format!("the server at {endpoint} does not offer this yet"))
        }
        Code::Unavailable | Code::Unknown if is_transport(status) => hints.push(format!(
            "lost the connection to {endpoint}; check that the instance is still running"
        )),
        _ => {}
    }
    hints
}

/// Whether a status was made by the client's transport, not by the server.
fn is_transport(status: &tonic::Status) -> bool {
    let m = status.message();
    m.contains("transport error")
        || m.contains("error trying to connect")
        || m.contains("connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_exit_codes() {
        assert_eq!(exit_for(Code::NotFound) as i32, 3);
        assert_eq!(exit_for(Code::InvalidArgument) as i32, 4);
        assert_eq!(exit_for(Code::OutOfRange) as i32, 4);
        assert_eq!(exit_for(Code::Unavailable) as i32, 5);
        assert_eq!(exit_for(Code::Unauthenticated) as i32, 6);
        assert_eq!(exit_for(Code::PermissionDenied) as i32, 6);
        assert_eq!(exit_for(Code::FailedPrecondition) as i32, 7);
        assert_eq!(exit_for(Code::Internal) as i32, 1);
    }

    #[test]
    fn detail_becomes_hints() {
        let d = pb::ErrorDetail {
            latest_version: Some(57),
            ..Default::default()
        };
        let mut s = tonic::Status::invalid_argument("version 99 is past the latest");
        s.metadata_mut().insert_bin(
            DETAIL_TRAILER,
            tonic::metadata::MetadataValue::from_bytes(&d.encode_to_vec()),
        );
        let e = CliError::Status {
            status: s,
            endpoint: "http://x".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with("error: INVALID_ARGUMENT: version 99 is past the latest"));
        assert!(
            text.contains("hint: the partition's latest version is 57"),
            "{text}"
        );
        assert_eq!(e.exit(), Exit::InvalidArgument);
    }
}
