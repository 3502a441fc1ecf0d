//! The gRPC server: a small tokio runtime owned by the app, serving
//! `strata.v1.Query`, `strata.v1.Admin`, `grpc.health.v1.Health` and
//! server reflection (v1) on `AppConfig::grpc_listen`.
//!
//! The runtime exists only while the server does: it is created when the
//! app starts with `grpc_listen` set and shut down (gracefully, with a
//! bound) when the app stops. Unary calls without a client deadline get
//! `query.default_deadline`; messages are bounded by
//! `query.max_message_bytes` both ways.
//!
//! With `grpc_security.server_tls`, the server speaks only TLS (mutual
//! when a client CA is set); with tokens, Query and Admin sit behind the
//! bearer-token interceptor of `security`, while health and reflection
//! stay open. Refused calls still go through `remap_transport_status`,
//! which leaves their statuses alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::query_server::QueryServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use super::context::QueryContext;
use super::error::remap_transport_status;
use super::security::{self, Access, Authenticator};
use super::service::QueryService;
use strata_engine::AppHandle;
use strata_engine::{Error, Result};

/// Most threads the server's runtime runs blocking reads (scans, diffs,
/// histories, rewinds waiting on a worker) on; more wait in line.
const MAX_BLOCKING_THREADS: usize = 8;

/// Streams a client may reset before the server has accepted them, per
/// connection, before the connection is closed.
const PENDING_RESETS: usize = 1024;

/// How long a stopping server waits for calls in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running gRPC server and the runtime it runs on.
pub struct GrpcServer {
    local: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Told when the server has stopped. A std channel: stopping may be
    /// asked from any thread, async or not, and must not need a runtime.
    stopped: std::sync::mpsc::Receiver<()>,
    /// The server's task; its outcome is logged by the task itself.
    _task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    /// Binds `addr` and starts serving `app`'s tables.
    pub fn start(addr: SocketAddr, app: AppHandle) -> Result<GrpcServer> {
        let limits = app.config.query.clone();
        let builder = security::server_builder(&app.config.grpc_security)?;
        let auth = Authenticator::new(&app.config.grpc_security);
        let tls = app.config.grpc_security.server_tls.is_some();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads)
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("strata-grpc")
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                context: "starting the gRPC server's runtime".into(),
                source: e,
            })?;
        let incoming = {
            let _g = runtime.enter();
            TcpIncoming::bind(addr)
                .map_err(|e| Error::Io {
                    context: format!("binding the gRPC server to {addr} (grpc_listen)"),
                    source: e,
                })?
                .with_nodelay(Some(true))
        };
        let local = incoming.local_addr().map_err(|e| Error::Io {
            context: format!("reading the gRPC server's address ({addr})"),
            source: e,
        })?;

        let service = QueryService::new(Arc::new(QueryContext::new(app, local)));
        let max = limits.max_message_bytes;
        let query = QueryServer::new(service.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let query = InterceptedService::new(query, auth.require(Access::Read));
        let admin = AdminServer::new(service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let admin = InterceptedService::new(admin, auth.require(Access::Admin));
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| {
                Error::config(
                    "grpc_listen",
                    format!("building the reflection service: {e}"),
                )
            })?;

        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done, stopped) = std::sync::mpsc::channel();
        let span = tracing::info_span!("grpc_server", addr = %local);
        let task = runtime.spawn(
            async move {
                health_reporter
                    .set_serving::<QueryServer<QueryService>>()
                    .await;
                health_reporter
                    .set_serving::<AdminServer<QueryService>>()
                    .await;
                tracing::info!(tls, "serving strata.v1 over gRPC");
                let r = builder
                    .timeout(limits.default_deadline)
                    // Clients that give up on calls under load reset their
                    // streams; h2's default (20 pending resets) answers
                    // that by closing the whole connection (GOAWAY
                    // ENHANCE_YOUR_CALM), failing every call on it.
                    .http2_max_pending_accept_reset_streams(Some(PENDING_RESETS))
                    .layer(tower::util::MapResponseLayer::new(remap_transport_status))
                    .add_service(health)
                    .add_service(reflection)
                    .add_service(query)
                    .add_service(admin)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                match r {
                    Ok(()) => tracing::info!("gRPC server stopped"),
                    Err(e) => tracing::error!(error = %e, "gRPC server failed"),
                }
                let _ = done.send(());
            }
            .instrument(span),
        );
        Ok(GrpcServer {
            local,
            runtime: Some(runtime),
            stop: Some(stop),
            stopped,
            _task: task,
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting calls, waits a bounded time for calls in flight,
    /// and shuts the runtime down.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if self.stopped.recv_timeout(DRAIN_TIMEOUT).is_err() {
            tracing::warn!(
                timeout_s = DRAIN_TIMEOUT.as_secs(),
                "calls still in flight when the gRPC server stopped"
            );
        }
        // Not `shutdown_timeout`: that panics when called from async code
        // (dropping a `RunningApp` inside a runtime). The server has
        // drained; what is left (blocking reads) ends on its own.
        runtime.shutdown_background();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
