//! Forwarding, written once: a request for a partition owned elsewhere is
//! re-addressed (the caller's options as forwarded: one more hop, the
//! server's hop limit, what is left of the deadline; for point reads, the
//! partition, so the owner reads it and nothing else), wrapped with the
//! caller's credentials and deadline ([`Call::request`]) and sent on the
//! owner's channel. Each RPC says only how it is re-addressed and which
//! client method carries it ([`Forward`]); [`forward`] does the rest, for
//! every RPC that `route::routed` serves.

use std::future::Future;
use std::pin::Pin;

use strata_proto::v1 as pb;
use strata_state::Partition;
use tonic::Status;

use crate::error::to_status;
use crate::route::{Call, Remote};

/// An owner's reply, on its way.
pub(crate) type Reply<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// A request that can be forwarded to a partition's owner.
pub(crate) trait Forward: Clone + Send + 'static {
    /// What the owner answers.
    type Reply: Send + 'static;
    /// The caller's request options.
    fn options(&self) -> Option<pb::RequestOptions>;
    /// The request for the owner of partition `p`, with `options`.
    fn addressed(&self, options: pb::RequestOptions, p: Partition) -> Self;
    /// Sends it to `remote`.
    fn send(remote: Remote, request: tonic::Request<Self>) -> Reply<Self::Reply>;
}

/// The `there` half of `route::routed` for `request`: forwards it to the
/// owner of `p`.
pub(crate) fn forward<'a, R: Forward>(
    call: &'a Call,
    request: &'a R,
    p: Partition,
) -> impl Fn(Remote) -> Reply<R::Reply> + 'a {
    move |remote| {
        let addressed = request.addressed(call.forwarded_options(request.options()), p);
        match call.request(addressed) {
            Ok(r) => R::send(remote, r),
            Err(e) => {
                let status = to_status(&e);
                Box::pin(async move { Err(status) })
            }
        }
    }
}

/// Implements [`Forward`] for a request type: whether it names the
/// partition it reads (point reads do; requests already made per
/// partition keep theirs), the client and its method.
macro_rules! forwarded {
    ($req:ty => $reply:ty, $client:ident . $method:ident, names_partition: $names:literal) => {
        impl Forward for $req {
            type Reply = $reply;
            fn options(&self) -> Option<pb::RequestOptions> {
                self.options
            }
            fn addressed(&self, options: pb::RequestOptions, p: Partition) -> Self {
                let mut r = self.clone();
                r.options = Some(options);
                if $names {
                    r.partition = Some(p.0);
                }
                r
            }
            fn send(mut remote: Remote, request: tonic::Request<Self>) -> Reply<Self::Reply> {
                Box::pin(async move { Ok(remote.$client.$method(request).await?.into_inner()) })
            }
        }
    };
}

forwarded!(pb::GetRequest => pb::GetResponse, query.get, names_partition: true);
forwarded!(pb::HistoryRequest => pb::HistoryResponse, query.history, names_partition: true);
forwarded!(pb::ScanRequest => pb::ScanResponse, query.scan, names_partition: false);
forwarded!(pb::DiffRequest => pb::DiffResponse, query.diff, names_partition: false);
forwarded!(pb::RewindRequest => pb::RewindResponse, admin.rewind, names_partition: false);
forwarded!(
    pb::CancelReplayRequest => pb::CancelReplayResponse, admin.cancel_replay, names_partition: false
);
