//! The composed app: the engine, its gRPC query server and its owner
//! directory announcement, started and stopped in order.
//!
//! Start: the engine (tasks, consumer group, directory follower) first;
//! then, when `grpc_listen` is set, the query server on the engine's
//! [`AppHandle`](strata_engine::AppHandle); then the announcement of the
//! server's endpoint, so no other instance routes here before it serves.
//! Stop: the announcement is withdrawn first (others stop routing here at
//! once), the server drains after a short pause (in-flight forwards land),
//! then the engine commits, leaves the group and stops its threads.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use strata_engine::{AppConfig, Error, Result, Topology, advertised_endpoint};
use strata_query::GrpcServer;

/// An app: configuration checked (the TLS material too), ready to run
/// topologies.
#[derive(Clone, Debug)]
pub struct App {
    engine: strata_engine::App,
}

impl App {
    /// Validates the configuration, reading and parsing the gRPC TLS
    /// material as the server and the forwarding client would.
    pub fn new(config: AppConfig) -> Result<App> {
        let engine = strata_engine::App::new(config)?;
        strata_query::check_tls(&engine.config().grpc_security)?;
        Ok(App { engine })
    }

    /// The configuration.
    pub fn config(&self) -> &AppConfig {
        self.engine.config()
    }

    /// Starts the engine (see [`strata_engine::App::launch`]), then the
    /// gRPC server when `grpc_listen` is set, then announces the
    /// instance's endpoint (the server's, or `advertised_endpoint`) in the
    /// owner directory.
    pub fn start(&self, topology: Topology) -> Result<RunningApp> {
        let engine = self.engine.launch(topology)?;
        // From here, dropping `app` stops what was started, in order.
        let mut app = RunningApp {
            engine,
            grpc: None,
            stopped: false,
        };
        let config = self.engine.config();
        let endpoint = match config.grpc_listen {
            Some(addr) => {
                let server = GrpcServer::start(addr, app.engine.handle().clone())?;
                let local = server.local_addr();
                app.grpc = Some(server);
                Some(advertised_endpoint(config, local)?)
            }
            // Served by the embedding application itself.
            None => config.advertised_endpoint.clone(),
        };
        if let Some(endpoint) = endpoint {
            app.engine.announce(endpoint)?;
        }
        Ok(app)
    }
}

/// A running app: query its tables (through [`Deref`] to the engine's
/// [`strata_engine::RunningApp`]), rewind them, read its metrics, stop it.
pub struct RunningApp {
    engine: strata_engine::RunningApp,
    /// The gRPC server, when `grpc_listen` is set.
    grpc: Option<GrpcServer>,
    /// Stopped already (by `shutdown` or `run_until`).
    stopped: bool,
}

impl Deref for RunningApp {
    type Target = strata_engine::RunningApp;

    fn deref(&self) -> &strata_engine::RunningApp {
        &self.engine
    }
}

impl RunningApp {
    /// Where the gRPC server listens (the bound address, with the actual
    /// port when `grpc_listen` asked for port 0), if it runs.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(GrpcServer::local_addr)
    }

    /// The engine alone.
    pub fn engine(&self) -> &strata_engine::RunningApp {
        &self.engine
    }

    /// Withdraws from the owner directory, drains the gRPC server, then
    /// commits everything, leaves the group and stops the threads.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<()> {
        self.stopped = true;
        // Withdraw first (a tombstone), so others stop routing here now
        // rather than after its TTL, and keep serving what is still owned
        // here while they notice.
        self.engine.withdraw();
        if let Some(g) = self.grpc.take() {
            std::thread::sleep(
                self.engine
                    .config()
                    .directory_interval
                    .min(Duration::from_secs(1)),
            );
            // Then queries: they must not wait on workers that are leaving.
            g.shutdown();
        }
        self.engine.stop()
    }

    /// Runs until `shutdown` resolves (e.g. `tokio::signal::ctrl_c()`), or
    /// a fatal error stops a thread; then shuts down gracefully.
    pub async fn run_until<F: std::future::Future>(mut self, shutdown: F) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if self.engine.check_threads().is_err() {
                        break;
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || self.stop_all())
            .await
            .map_err(|e| Error::Stopped(format!("shutdown task failed: {e}")))?
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = self.stop_all()
        {
            tracing::error!(error = %e, "error while stopping the app");
        }
    }
}
