//! Routing: where a read of one table partition is served, and forwarding
//! to its owner when that is another instance.
//!
//! A call arrives with a deadline (the client's `grpc-timeout`, or the
//! server's default), routing options (`allow_stale`, `max_hops`, `hops`)
//! and perhaps credentials. For each partition it concerns, the call is
//! served here when the partition is owned here and up to date; otherwise
//! the owner directory names the owner and the request is forwarded there
//! with `hops + 1`, the time that remains (less a margin for the way back)
//! and the caller's `authorization` metadata unchanged, so the owner
//! authorizes the original caller.
//!
//! Invariants:
//! - A request is never forwarded more than `max_hops` times (default
//!   `query.max_hops`); running out answers UNAVAILABLE.
//! - A request is never forwarded with less than [`MIN_FORWARD`] left: it
//!   answers DEADLINE_EXCEEDED here instead of failing later elsewhere.
//! - When the directory names no owner, names this instance although the
//!   partition is not here, or the owner is unreachable or no longer owns
//!   the partition, the router waits for the directory to change (bounded
//!   by the deadline) and tries again, at most [`MAX_ATTEMPTS`] times.
//! - A restoring partition answers UNAVAILABLE with its progress (the
//!   owner's answer is passed back as is), unless the request allows a
//!   stale read: the owner then serves what it has restored so far, and
//!   the reply says `stale` with the records still to restore.
//! - A forwarded call's failure is passed back with its status unchanged
//!   (code, message and detail trailer), so the error contract holds
//!   across hops.

use std::future::Future;
use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use strata_state::store::RocksStore;
use strata_state::{Partition, PartitionReader, Version};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::context::QueryContext;
use super::error::QueryError;
use strata_engine::directory::Owner;
use strata_engine::registry::PartitionState;

/// Least time a forwarded call must have left to be worth sending.
pub(crate) const MIN_FORWARD: Duration = Duration::from_millis(5);

/// Most routing attempts of one partition within one call (each after the
/// owner directory changed, or a bounded wait for it to).
pub(crate) const MAX_ATTEMPTS: u32 = 4;

/// Time kept back from a forwarded call's deadline for the reply's way
/// back and the work done here after it.
const RETURN_MARGIN: Duration = Duration::from_millis(2);

use super::security::AUTHORIZATION;

/// One incoming call's routing facts.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// How many times the request was forwarded to reach this instance.
    pub hops: u32,
    /// Most forwards allowed.
    pub max_hops: u32,
    /// Whether the caller accepts a read of a partition that is not up to
    /// date.
    pub allow_stale: bool,
    /// The caller's credentials, passed on when forwarding.
    auth: Option<AsciiMetadataValue>,
    /// The deadline the caller set itself, if any (streams get no
    /// default).
    stream_deadline: Option<Instant>,
}

impl Call {
    /// The routing facts of a call with `metadata` and `options`, arrived
    /// now.
    pub(crate) fn new(
        ctx: &QueryContext,
        metadata: &MetadataMap,
        options: Option<&pb::RequestOptions>,
    ) -> Call {
        let asked = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = asked
            // The server enforces the same bound (tonic's server timeout
            // takes the smaller of the two).
            .map_or(ctx.limits.default_deadline, |t| {
                t.min(ctx.limits.default_deadline)
            });
        let o = options.cloned().unwrap_or_default();
        Call {
            deadline: Instant::now() + timeout,
            hops: o.hops,
            max_hops: if o.max_hops == 0 {
                ctx.limits.max_hops
            } else {
                o.max_hops.min(ctx.limits.max_hops.max(8))
            },
            allow_stale: o.allow_stale,
            auth: metadata.get(AUTHORIZATION).cloned(),
            stream_deadline: asked.map(|t| Instant::now() + t),
        }
    }

    /// A call made inside this process (tests, scatter-gather of a call
    /// that has none of its own).
    #[cfg(test)]
    pub(crate) fn local(timeout: Duration) -> Call {
        Call {
            deadline: Instant::now() + timeout,
            hops: 0,
            max_hops: 3,
            allow_stale: false,
            auth: None,
            stream_deadline: None,
        }
    }

    /// The same call with `keep` of the time left held back: the share a
    /// scatter-gather gives each partition, so that it can still answer
    /// with the partitions that did reply (the others reported as
    /// DEADLINE_EXCEEDED) instead of failing as a whole.
    pub(crate) fn keeping(&self, keep: f64) -> Call {
        let left = self.remaining();
        Call {
            deadline: Instant::now() + left.mul_f64((1.0 - keep).clamp(0.0, 1.0)),
            ..self.clone()
        }
    }

    /// Time left before the caller's deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The options a forwarded copy of a request carries.
    pub(crate) fn forwarded_options(
        &self,
        options: Option<pb::RequestOptions>,
    ) -> pb::RequestOptions {
        pb::RequestOptions {
            hops: self.hops + 1,
            max_hops: self.max_hops,
            allow_stale: self.allow_stale,
            ..options.unwrap_or_default()
        }
    }

    /// Wraps a forwarded message with the time that remains and the
    /// caller's credentials.
    pub(crate) fn request<M>(&self, message: M) -> Result<tonic::Request<M>, QueryError> {
        let left = self.remaining();
        if left < MIN_FORWARD {
            return Err(QueryError::DeadlineExceeded(format!(
                "{} ms left of the deadline, too little to forward the request to the partition's owner; \
                 retry with a longer deadline",
                left.as_millis()
            )));
        }
        let mut r = tonic::Request::new(message);
        r.set_timeout(left.saturating_sub(RETURN_MARGIN).max(MIN_FORWARD));
        if let Some(a) = &self.auth {
            r.metadata_mut().insert(AUTHORIZATION, a.clone());
        }
        Ok(r)
    }
}

impl Call {
    /// Wraps a forwarded stream request (Subscribe): the caller's
    /// credentials, and its deadline only if it set one.
    pub(crate) fn stream_request<M>(&self, message: M) -> tonic::Request<M> {
        let mut r = tonic::Request::new(message);
        if let Some(d) = self.stream_deadline {
            r.set_timeout(d.saturating_duration_since(Instant::now()).max(MIN_FORWARD));
        }
        if let Some(a) = &self.auth {
            r.metadata_mut().insert(AUTHORIZATION, a.clone());
        }
        r
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A partition readable here.
#[derive(Clone)]
pub(crate) struct Local {
    pub partition: Partition,
    pub reader: PartitionReader<RocksStore>,
    /// How many times the request was forwarded to get here.
    pub hops: u32,
    /// For a stale read of a restoring partition: the changelog records it
    /// has still to read (0 when unknown).
    pub stale: Option<u64>,
}

impl Local {
    /// Who served a read at `read_version`.
    pub(crate) fn served(&self, ctx: &QueryContext, read_version: Version) -> pb::Served {
        pb::Served {
            partition: self.partition.0,
            instance: Some(ctx.instance.clone()),
            hops: self.hops,
            read_version: read_version.0,
            latest_version: self.reader.latest_version().0,
            latest_time_ms: self.reader.last_commit_time().0,
            stale: self.stale.is_some(),
            lag_records: self.stale.unwrap_or(0),
        }
    }
}

/// The owner of a partition elsewhere, with clients to reach it.
pub(crate) struct Remote {
    pub owner: Owner,
    pub query: QueryClient<Channel>,
    pub admin: AdminClient<Channel>,
}

/// Where one partition is served. (Short-lived, one per routing
/// decision: the size difference between the two does not matter.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Route {
    Here(Local),
    There(Remote),
}

impl QueryContext {
    /// Where partition `p` of `table` is served for `call`.
    pub(crate) fn route(
        &self,
        call: &Call,
        table: &str,
        p: Partition,
    ) -> Result<Route, QueryError> {
        match self.reader(table, p) {
            Ok(reader) => {
                return Ok(Route::Here(Local {
                    partition: p,
                    reader,
                    hops: call.hops,
                    stale: None,
                }));
            }
            Err(QueryError::Restoring { .. }) if call.allow_stale => {
                if let Some((reader, PartitionState::Restoring { .. })) =
                    self.app.registry.any_reader(table, p)
                {
                    let lag = self.app.registry.restore_remaining(table, p).unwrap_or(0);
                    return Ok(Route::Here(Local {
                        partition: p,
                        reader,
                        hops: call.hops,
                        stale: Some(lag),
                    }));
                }
                // Running by now, or gone: route again.
                return self.route(
                    &Call {
                        allow_stale: false,
                        ..call.clone()
                    },
                    table,
                    p,
                );
            }
            Err(e @ QueryError::Restoring { .. }) => return Err(e),
            Err(QueryError::NotLocal { .. }) => {}
            Err(e) => return Err(e),
        }
        let directory = &self.app.directory;
        let owner = directory.owner(p);
        let owner = match owner {
            Some(o) if o.member != directory.member_id() => o,
            Some(_) => {
                return Err(QueryError::NoOwner {
                    table: table.to_string(),
                    partition: p,
                    why: "the owner directory still names this instance, which no longer holds it (a handover in \
                          progress)"
                        .into(),
                });
            }
            None => {
                return Err(QueryError::NoOwner {
                    table: table.to_string(),
                    partition: p,
                    why: if directory.is_caught_up() {
                        "no live instance claims it in the owner directory (a rebalance in progress, or its \
                         owner does not advertise an endpoint)"
                            .into()
                    } else {
                        "this instance has not yet read the owner directory to its end".into()
                    },
                });
            }
        };
        if call.hops + 1 > call.max_hops {
            return Err(QueryError::Unavailable(format!(
                "partition {p} of table {table:?} is owned by {} ({}), but the request has been forwarded {} \
                 times already (max_hops {}); the owner directories disagree during a rebalance: retry shortly",
                owner.member, owner.endpoint, call.hops, call.max_hops
            )));
        }
        let channel = self.peers.channel(
            &self.app.config.grpc_security,
            self.limits.connect_timeout,
            &owner.endpoint,
        )?;
        let max = self.limits.max_message_bytes;
        Ok(Route::There(Remote {
            query: QueryClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            admin: AdminClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            owner,
        }))
    }
}

/// Whether a forwarded call that failed with `s` may succeed after the
/// directory changes: the owner was unreachable, or no longer owns the
/// partition (and could not forward it on). Not for restoring partitions
/// (the owner's answer stands), deadlines, or the caller's mistakes.
fn retryable(s: &Status) -> bool {
    if matches!(
        s.code(),
        Code::Unknown | Code::Cancelled | Code::ResourceExhausted
    ) && is_transport(s)
    {
        // The connection broke under the call (the owner stopping).
        return true;
    }
    if s.code() != Code::Unavailable {
        return false;
    }
    let restoring = s
        .metadata()
        .get_bin(super::error::DETAIL_TRAILER)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| <pb::ErrorDetail as prost::Message>::decode(b).ok())
        .is_some_and(|d| d.restoring.is_some());
    !restoring
}

/// Serves one partition's part of a call: with `here` when the partition
/// is readable on this instance, otherwise by `there` on its owner,
/// retrying after the owner directory changes when the owner was stale or
/// unreachable (see the module doc).
pub(crate) async fn routed<T, H, HF, R, RF>(
    ctx: &QueryContext,
    call: &Call,
    table: &str,
    p: Partition,
    here: H,
    there: R,
) -> Result<T, QueryError>
where
    H: FnOnce(Local) -> HF,
    HF: Future<Output = Result<T, QueryError>>,
    R: Fn(Remote) -> RF,
    RF: Future<Output = Result<T, Status>>,
{
    let mut here = Some(here);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let seen = ctx.app.directory.changes();
        let failure = match ctx.route(call, table, p) {
            Ok(Route::Here(local)) => {
                // `here` is taken once: this arm returns.
                return match here.take() {
                    Some(here) => here(local).await,
                    None => Err(QueryError::Internal(
                        "a partition was served here twice".into(),
                    )),
                };
            }
            Ok(Route::There(remote)) => {
                let (member, endpoint) =
                    (remote.owner.member.clone(), remote.owner.endpoint.clone());
                match there(remote).await {
                    Ok(v) => return Ok(v),
                    Err(s) if retryable(&s) => {
                        tracing::debug!(%table, partition = p.0, %member, %endpoint, attempt, code = ?s.code(),
                            message = s.message(), "forwarded call failed; waiting for the owner directory");
                        if is_transport(&s) {
                            ctx.peers.forget(&endpoint);
                        }
                        QueryError::Forwarded {
                            member,
                            endpoint,
                            status: s,
                        }
                    }
                    Err(s) => {
                        return Err(QueryError::Forwarded {
                            member,
                            endpoint,
                            status: s,
                        });
                    }
                }
            }
            Err(e @ (QueryError::NoOwner { .. } | QueryError::NotLocal { .. })) => e,
            Err(e) => return Err(e),
        };
        let left = call.remaining();
        if attempt >= MAX_ATTEMPTS || left < MIN_FORWARD * 2 {
            return Err(failure);
        }
        // The directory moves with a rebalance; give it up to a second
        // (and half of what is left) to say something new.
        let wait = left.saturating_sub(MIN_FORWARD) / 2;
        ctx.app
            .directory
            .changed_since(seen, wait.min(Duration::from_secs(1)))
            .await;
    }
}

/// Whether a status is the client transport's own (the owner could not be
/// reached) rather than an answer from the owner.
pub(crate) fn is_transport(s: &Status) -> bool {
    matches!(
        s.code(),
        // RESOURCE_EXHAUSTED without an answer: the peer's HTTP/2 layer
        // closed the connection (GOAWAY ENHANCE_YOUR_CALM).
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::ResourceExhausted
    ) && s.metadata().get("content-type").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn restoring_owners_are_not_retried() {
        use prost::Message;
        use tonic::metadata::MetadataValue;
        let mut md = MetadataMap::new();
        let d = pb::ErrorDetail {
            restoring: Some(pb::Restoring::default()),
            ..Default::default()
        };
        md.insert_bin(
            crate::error::DETAIL_TRAILER,
            MetadataValue::from_bytes(&d.encode_to_vec()),
        );
        assert!(!retryable(&Status::with_metadata(
            Code::Unavailable,
            "restoring",
            md
        )));
        assert!(retryable(&Status::unavailable("not owned here")));
        assert!(!retryable(&Status::not_found("no table")));
        assert!(!retryable(&Status::deadline_exceeded("late")));
    }

    #[test]
    fn forwarded_requests_carry_the_time_left_and_one_more_hop() {
        let call = Call::local(Duration::from_millis(500));
        let o = call.forwarded_options(Some(pb::RequestOptions::default()));
        assert_eq!((o.hops, o.max_hops), (1, 3));
        let r = call.request(()).unwrap();
        let t = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap();
        assert!(
            t <= Duration::from_millis(500) && t >= Duration::from_millis(400),
            "{t:?}"
        );
        let late = Call::local(Duration::from_millis(1));
        assert!(matches!(
            late.request(()),
            Err(QueryError::DeadlineExceeded(_))
        ));
    }
}
