//! The query service's error contract: every failure of a query or admin
//! call becomes a gRPC status in [`to_status`], and nowhere else.
//!
//! | failure | status |
//! | --- | --- |
//! | unknown table | NOT_FOUND |
//! | malformed key, JSON, range, point or page token; a version past the partition's latest; a version read over several partitions; a replay with a key filter | INVALID_ARGUMENT |
//! | a point older than retention keeps; a replay whose input offsets the input topic no longer holds | OUT_OF_RANGE |
//! | a partition restoring (with progress); no owner known for it; its owner unreachable; out of hops; the engine stopping | UNAVAILABLE |
//! | too little of the caller's deadline left to forward the request | DEADLINE_EXCEEDED |
//! | the owner a request was forwarded to answered with an error | that status, unchanged (code, message, detail) |
//! | a request or reply over the message size bound; a diff or single value too large for one page | RESOURCE_EXHAUSTED |
//! | a Rewind whose `expect_latest` no longer holds; a replay whose input positions cannot be placed (no input record's lineage within `replay_lineage_scan` versions), of a task that reads or writes a repartition topic, or while a replay runs; CancelReplay of a partition not replaying | FAILED_PRECONDITION |
//! | no bearer token, a malformed one, or one the server does not know (when tokens are configured) | UNAUTHENTICATED |
//! | a read token on `strata.v1.Admin` (Rewind) | PERMISSION_DENIED |
//! | corrupt local state | DATA_LOSS |
//!
//! Statuses carry an encoded `ErrorDetail` in the `strata-error-detail-bin`
//! trailer when there is something machine-readable to say (partition,
//! restore progress, latest version).
//!
//! tonic itself answers two request failures before any handler runs: a
//! message over the size bound (OUT_OF_RANGE) and bytes that do not decode
//! as the request message (INTERNAL). [`remap_transport_status`] rewrites
//! those into the contract (RESOURCE_EXHAUSTED and INVALID_ARGUMENT): both
//! are the caller's doing.

use prost::Message;
use strata_proto::v1::{ErrorDetail, Restoring};
use strata_state::Partition;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The trailer carrying an encoded `ErrorDetail`.
pub(crate) const DETAIL_TRAILER: &str = "strata-error-detail-bin";

/// Why a query or admin call failed, before it becomes a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// No table of that name.
    #[error("no table named {table:?}; the tables are {known:?} (ListTables lists them)")]
    UnknownTable { table: String, known: Vec<String> },
    /// The request's arguments are malformed or inconsistent; the message
    /// says which and what to send instead.
    #[error("{0}")]
    InvalidArgument(String),
    /// The partition is not owned by this instance.
    #[error(
        "partition {partition} of table {table:?} is not owned by this instance; the request is routed to its \
         owner through the owner directory"
    )]
    NotLocal { table: String, partition: Partition },
    /// The partition is owned elsewhere and no owner could be found.
    #[error(
        "partition {partition} of table {table:?} has no reachable owner: {why}; retry shortly"
    )]
    NoOwner {
        table: String,
        partition: Partition,
        why: String,
    },
    /// Cannot be served now; the message says why and what to do.
    #[error("{0}")]
    Unavailable(String),
    /// Too little time is left of the caller's deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The owner a request was forwarded to answered with this status (or
    /// could not be reached), passed back as it is.
    #[error("forwarded to {member} at {endpoint}: {}: {}", status.code(), status.message())]
    Forwarded {
        member: String,
        endpoint: String,
        status: tonic::Status,
    },
    /// The partition is replaying its changelog.
    #[error(
        "partition {partition} of table {table:?} is restoring from its changelog ({records} records read, \
         {rate:.0} records/s); retry shortly"
    )]
    Restoring {
        table: String,
        partition: Partition,
        records: u64,
        rate: f64,
    },
    /// A reply or one of its items would exceed the bounds.
    #[error("{0}")]
    TooLarge(String),
    /// The call carries no acceptable bearer token; the message says what
    /// to send (never the token itself).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but does not allow this call (a read token on
    /// Admin).
    #[error("{0}")]
    PermissionDenied(String),
    /// A blocking read task failed (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
    /// The state store refused or failed.
    #[error(transparent)]
    State(#[from] strata_state::Error),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] strata_engine::Error),
}

impl QueryError {
    /// An invalid argument, with what to do.
    pub(crate) fn invalid(msg: impl Into<String>) -> QueryError {
        QueryError::InvalidArgument(msg.into())
    }

    /// Whether the partition concerned could not be read here (restoring
    /// or not owned): a scatter-gather reports it and goes on.
    pub(crate) fn is_unavailable_partition(&self) -> bool {
        match self {
            QueryError::NotLocal { .. }
            | QueryError::Restoring { .. }
            | QueryError::NoOwner { .. }
            | QueryError::Unavailable(_)
            | QueryError::DeadlineExceeded(_) => true,
            QueryError::Forwarded { status, .. } => matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ),
            _ => false,
        }
    }
}

/// The one mapping from query errors to gRPC statuses.
pub(crate) fn to_status(e: &QueryError) -> Status {
    let mut detail = ErrorDetail::default();
    let code = match e {
        QueryError::Forwarded {
            member,
            endpoint,
            status,
        } => {
            // The owner's answer stands as it is; a transport failure (no
            // answer at all) says which owner could not be reached.
            if super::route::is_transport(status) {
                let detail = ErrorDetail {
                    owner: Some(strata_proto::v1::Instance {
                        id: member.clone(),
                        endpoint: endpoint.clone(),
                    }),
                    retry_after_ms: 500,
                    ..Default::default()
                };
                let mut md = MetadataMap::new();
                md.insert_bin(
                    DETAIL_TRAILER,
                    MetadataValue::from_bytes(&detail.encode_to_vec()),
                );
                return Status::with_metadata(
                    Code::Unavailable,
                    format!(
                        "the partition's owner {member} at {endpoint} could not be reached ({}); retry shortly, \
                         or check that instance is up and its advertised_endpoint is reachable from here",
                        status.message()
                    ),
                    md,
                );
            }
            let mut md = MetadataMap::new();
            if let Some(d) = status.metadata().get_bin(DETAIL_TRAILER) {
                md.insert_bin(DETAIL_TRAILER, d.clone());
            }
            return Status::with_metadata(status.code(), status.message().to_string(), md);
        }
        QueryError::NoOwner {
            table, partition, ..
        } => {
            detail.table = table.clone();
            detail.partition = Some(partition.0);
            detail.retry_after_ms = 500;
            Code::Unavailable
        }
        QueryError::Unavailable(_) => Code::Unavailable,
        QueryError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        QueryError::UnknownTable { table, .. } => {
            detail.table = table.clone();
            Code::NotFound
        }
        QueryError::InvalidArgument(_) => Code::InvalidArgument,
        QueryError::NotLocal { table, partition } => {
            detail.table = table.clone();
            detail.partition = Some(partition.0);
            Code::Unavailable
        }
        QueryError::Restoring {
            table,
            partition,
            records,
            rate,
        } => {
            detail.table = table.clone();
            detail.partition = Some(partition.0);
            detail.restoring = Some(Restoring {
                records: *records,
                rate: *rate,
                remaining: None,
            });
            detail.retry_after_ms = 1000;
            Code::Unavailable
        }
        QueryError::TooLarge(_) => Code::ResourceExhausted,
        QueryError::Unauthenticated(_) => Code::Unauthenticated,
        QueryError::PermissionDenied(_) => Code::PermissionDenied,
        QueryError::Internal(_) => Code::Internal,
        QueryError::State(s) | QueryError::Engine(strata_engine::Error::State(s)) => {
            state_code(s, &mut detail)
        }
        QueryError::Engine(strata_engine::Error::Precondition(_)) => Code::FailedPrecondition,
        QueryError::Engine(strata_engine::Error::InputNotRetained { .. }) => Code::OutOfRange,
        QueryError::Engine(
            strata_engine::Error::Stopped(_)
            | strata_engine::Error::Kafka(_)
            | strata_engine::Error::OutcomeUnknown { .. },
        ) => Code::Unavailable,
        QueryError::Engine(_) => Code::Internal,
    };
    let message = e.to_string();
    if detail == ErrorDetail::default() {
        return Status::new(code, message);
    }
    let mut md = MetadataMap::new();
    md.insert_bin(
        DETAIL_TRAILER,
        MetadataValue::from_bytes(&detail.encode_to_vec()),
    );
    Status::with_metadata(code, message, md)
}

fn state_code(s: &strata_state::Error, detail: &mut ErrorDetail) -> Code {
    use strata_state::Error as S;
    fn locate(detail: &mut ErrorDetail, l: &strata_state::Location) {
        detail.table = l.table.as_str().to_string();
        detail.partition = Some(l.partition.0);
    }
    match s {
        S::BeyondRetention { location, .. } => {
            locate(detail, location);
            Code::OutOfRange
        }
        S::FutureVersion {
            location, latest, ..
        } => {
            locate(detail, location);
            detail.latest_version = Some(latest.0);
            Code::InvalidArgument
        }
        S::InvalidScanToken { location, .. } | S::InvalidRequest { location, .. } => {
            locate(detail, location);
            Code::InvalidArgument
        }
        S::Protocol { location, .. } => {
            locate(detail, location);
            Code::FailedPrecondition
        }
        S::Corrupt { location, .. } => {
            locate(detail, location);
            Code::DataLoss
        }
        S::Storage { location, .. } | S::Changelog { location, .. } => {
            locate(detail, location);
            Code::Unavailable
        }
        S::InvalidConfig { .. } | S::Codec(_) => Code::Internal,
    }
}

/// Rewrites the statuses tonic produces on its own for a request it could
/// not accept (see the module doc). Applied to every response's headers: a
/// failed unary request is answered with its status in the headers.
pub(crate) fn remap_transport_status<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let Some(status) = Status::from_header_map(resp.headers()) else {
        return resp;
    };
    let msg = status.message();
    let fixed = match status.code() {
        Code::OutOfRange if msg.starts_with("Error, decoded message length too large") => {
            Status::resource_exhausted(format!(
                "the request is too large ({msg}); send a smaller request (fewer or shorter keys)"
            ))
        }
        Code::Internal if msg.starts_with("failed to decode Protobuf message") => {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message of this method ({msg}); check the client uses the \
             strata.v1 definitions this server publishes through reflection"
            ))
        }
        _ => return resp,
    };
    let headers = resp.headers_mut();
    if fixed.add_header(headers).is_err() {
        tracing::debug!("could not rewrite a transport status");
    }
    resp
}

#[cfg(test)]
mod tests {
    use strata_state::{Location, Point, TableName, Timestamp, Version};

    use super::*;

    fn loc() -> Box<Location> {
        Box::new(Location {
            table: TableName::new("t").unwrap(),
            partition: Partition(2),
        })
    }

    fn detail(s: &Status) -> Option<ErrorDetail> {
        s.metadata()
            .get_bin(DETAIL_TRAILER)
            .map(|v| ErrorDetail::decode(v.to_bytes().unwrap()).unwrap())
    }

    #[test]
    fn the_contract_case_by_case() {
        let cases: Vec<(QueryError, Code)> = vec![
            (
                QueryError::UnknownTable {
                    table: "x".into(),
                    known: vec!["t".into()],
                },
                Code::NotFound,
            ),
            (QueryError::invalid("bad key"), Code::InvalidArgument),
            (
                QueryError::State(strata_state::Error::FutureVersion {
                    location: loc(),
                    requested: Version(9),
                    latest: Version(3),
                }),
                Code::InvalidArgument,
            ),
            (
                QueryError::State(strata_state::Error::InvalidScanToken {
                    location: loc(),
                    reason: "x".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                QueryError::State(strata_state::Error::BeyondRetention {
                    location: loc(),
                    key: None,
                    point: Point::Time(Timestamp(1)),
                    retention: "last 1 versions".into(),
                    oldest: "version 4".into(),
                }),
                Code::OutOfRange,
            ),
            (
                QueryError::Restoring {
                    table: "t".into(),
                    partition: Partition(2),
                    records: 10,
                    rate: 5.0,
                },
                Code::Unavailable,
            ),
            (
                QueryError::NotLocal {
                    table: "t".into(),
                    partition: Partition(2),
                },
                Code::Unavailable,
            ),
            (
                QueryError::Engine(strata_engine::Error::Stopped("worker exited".into())),
                Code::Unavailable,
            ),
            (
                QueryError::TooLarge("too big".into()),
                Code::ResourceExhausted,
            ),
            (
                QueryError::State(strata_state::Error::Protocol {
                    location: loc(),
                    reason: "moved on".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                QueryError::Engine(strata_engine::Error::State(strata_state::Error::Protocol {
                    location: loc(),
                    reason: "x".into(),
                })),
                Code::FailedPrecondition,
            ),
            (
                QueryError::State(strata_state::Error::Corrupt {
                    location: loc(),
                    key: None,
                    detail: "crc".into(),
                }),
                Code::DataLoss,
            ),
            (
                QueryError::Engine(strata_engine::Error::Precondition(
                    "already replaying".into(),
                )),
                Code::FailedPrecondition,
            ),
            (
                QueryError::Engine(strata_engine::Error::InputNotRetained {
                    topic: "events".into(),
                    partition: 2,
                    offset: 5,
                    earliest: 9,
                }),
                Code::OutOfRange,
            ),
            (
                QueryError::Unauthenticated("send a token".into()),
                Code::Unauthenticated,
            ),
            (
                QueryError::PermissionDenied("send an admin token".into()),
                Code::PermissionDenied,
            ),
        ];
        for (e, want) in cases {
            let s = to_status(&e);
            assert_eq!(s.code(), want, "{e}");
            assert_eq!(s.message(), e.to_string());
        }
        let s = to_status(&QueryError::Restoring {
            table: "t".into(),
            partition: Partition(2),
            records: 10,
            rate: 5.0,
        });
        let d = detail(&s).unwrap();
        assert_eq!(
            (
                d.table.as_str(),
                d.partition,
                d.restoring.map(|r| r.records)
            ),
            ("t", Some(2), Some(10))
        );
        assert!(s.message().contains("retry"), "{}", s.message());
        let s = to_status(&QueryError::State(strata_state::Error::FutureVersion {
            location: loc(),
            requested: Version(9),
            latest: Version(3),
        }));
        assert_eq!(detail(&s).unwrap().latest_version, Some(3));
        assert!(detail(&to_status(&QueryError::invalid("x"))).is_none());
    }

    #[test]
    fn forwarded_answers_pass_through_and_unreachable_owners_are_named() {
        // The owner's answer, detail included, comes back as it is.
        let mut md = MetadataMap::new();
        let d = ErrorDetail {
            table: "t".into(),
            latest_version: Some(4),
            ..Default::default()
        };
        md.insert_bin(
            DETAIL_TRAILER,
            MetadataValue::from_bytes(&d.encode_to_vec()),
        );
        let mut owner_md = md.clone();
        owner_md.insert("content-type", "application/grpc".parse().unwrap());
        let answered = to_status(&QueryError::Forwarded {
            member: "b".into(),
            endpoint: "http://127.0.0.1:1".into(),
            status: Status::with_metadata(Code::InvalidArgument, "version 9 is past 4", owner_md),
        });
        assert_eq!(answered.code(), Code::InvalidArgument);
        assert_eq!(answered.message(), "version 9 is past 4");
        assert_eq!(detail(&answered).unwrap().latest_version, Some(4));
        // No answer at all: UNAVAILABLE naming the owner.
        let unreachable = to_status(&QueryError::Forwarded {
            member: "b".into(),
            endpoint: "http://127.0.0.1:1".into(),
            status: Status::unavailable("tcp connect error"),
        });
        assert_eq!(unreachable.code(), Code::Unavailable);
        assert!(
            unreachable.message().contains("http://127.0.0.1:1"),
            "{}",
            unreachable.message()
        );
        assert_eq!(detail(&unreachable).unwrap().owner.unwrap().id, "b");
        // And both count as an unavailable partition in a gather only
        // when they are.
        assert!(
            !QueryError::Forwarded {
                member: "b".into(),
                endpoint: "e".into(),
                status: Status::not_found("no table"),
            }
            .is_unavailable_partition()
        );
        assert!(
            QueryError::Forwarded {
                member: "b".into(),
                endpoint: "e".into(),
                status: Status::deadline_exceeded("late"),
            }
            .is_unavailable_partition()
        );
    }

    #[test]
    fn transport_statuses_are_remapped() {
        let remap = |s: Status| {
            Status::from_header_map(remap_transport_status(s.into_http::<()>()).headers()).unwrap()
        };
        let big = remap(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(big.code(), Code::ResourceExhausted);
        let garbage = remap(Status::internal(
            "failed to decode Protobuf message: buffer underflow",
        ));
        assert_eq!(garbage.code(), Code::InvalidArgument);
        // Others pass through untouched.
        assert_eq!(
            remap(Status::out_of_range("beyond retention")).code(),
            Code::OutOfRange
        );
        assert_eq!(remap(Status::internal("boom")).code(), Code::Internal);
    }
}
