//! The `strata.v1.Query` and `strata.v1.Admin` services: thin adapters from
//! tonic to the read, scan, diff, subscribe, table and admin modules. Each
//! call's routing facts (deadline, hops, stale reads, credentials) are
//! taken from its metadata and options (`route::Call`), and every error
//! becomes a status in `error::to_status`.

use std::pin::Pin;
use std::sync::Arc;

use strata_proto::v1 as pb;
use strata_proto::v1::admin_server::Admin;
use strata_proto::v1::query_server::Query;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::context::QueryContext;
use super::error::{QueryError, to_status};
use super::route::Call;
use super::{admin, diff, read, scan, subscribe, tables};

/// Serves both services: from this instance's table partitions, and by
/// forwarding to the owners of the others.
#[derive(Clone)]
pub(crate) struct QueryService {
    ctx: Arc<QueryContext>,
}

impl QueryService {
    pub(crate) fn new(ctx: Arc<QueryContext>) -> QueryService {
        QueryService { ctx }
    }

    fn call<T>(&self, request: &Request<T>, options: Option<&pb::RequestOptions>) -> Call {
        Call::new(&self.ctx, request.metadata(), options)
    }
}

/// Runs a unary call's work within its deadline, answering
/// DEADLINE_EXCEEDED itself just before tonic would cut the call (tonic
/// reports its own cut as CANCELLED, which the contract does not use).
async fn within<T>(
    deadline: std::time::Instant,
    work: impl std::future::Future<Output = Result<T, QueryError>>,
) -> Result<T, QueryError> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let until = deadline - std::time::Duration::from_millis(1).min(left);
    match tokio::time::timeout_at(until.into(), work).await {
        Ok(r) => r,
        Err(_) => Err(QueryError::DeadlineExceeded(
            "the call's deadline passed before it completed; retry with a longer deadline, or narrow the read"
                .into(),
        )),
    }
}

fn reply<T>(r: Result<T, QueryError>, rpc: &'static str) -> Result<Response<T>, Status> {
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            let status = to_status(&e);
            tracing::debug!(rpc, code = ?status.code(), error = %e, "query failed");
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            within(
                call.deadline,
                read::get(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "Get",
        )
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            within(
                call.deadline,
                read::history(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "History",
        )
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            within(
                call.deadline,
                scan::scan(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "Scan",
        )
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            within(
                call.deadline,
                diff::diff(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "Diff",
        )
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            subscribe::subscribe(self.ctx.clone(), call, request.into_inner()),
            "Subscribe",
        )
    }

    async fn list_tables(
        &self,
        _request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        Ok(Response::new(tables::list(&self.ctx)))
    }

    async fn describe_table(
        &self,
        request: Request<pb::DescribeTableRequest>,
    ) -> Result<Response<pb::DescribeTableResponse>, Status> {
        let call = self.call(&request, request.get_ref().options.as_ref());
        reply(
            within(
                call.deadline,
                tables::describe(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "DescribeTable",
        )
    }
}

#[tonic::async_trait]
impl Admin for QueryService {
    async fn rewind(
        &self,
        request: Request<pb::RewindRequest>,
    ) -> Result<Response<pb::RewindResponse>, Status> {
        // Only an up-to-date owner rewinds: no stale route.
        let mut call = self.call(&request, request.get_ref().options.as_ref());
        call.allow_stale = false;
        reply(
            within(
                call.deadline,
                admin::rewind(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "Rewind",
        )
    }

    async fn cancel_replay(
        &self,
        request: Request<pb::CancelReplayRequest>,
    ) -> Result<Response<pb::CancelReplayResponse>, Status> {
        let mut call = self.call(&request, request.get_ref().options.as_ref());
        call.allow_stale = false;
        reply(
            within(
                call.deadline,
                admin::cancel_replay(self.ctx.clone(), call, request.into_inner()),
            )
            .await,
            "CancelReplay",
        )
    }
}
