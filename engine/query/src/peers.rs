//! Clients of the other instances: one tonic channel per endpoint, built
//! with the configured TLS policy and kept (channels reconnect on their
//! own); a channel whose endpoint failed is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use strata_engine::config::GrpcSecurity;
use tonic::transport::{Channel, Endpoint};

use crate::error::QueryError;

/// Clients of other instances, one channel per endpoint (tonic channels
/// multiplex calls and reconnect on their own).
#[derive(Default)]
pub(crate) struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub(crate) fn channel(
        &self,
        security: &GrpcSecurity,
        connect_timeout: Duration,
        endpoint: &str,
    ) -> Result<Channel, QueryError> {
        let mut g = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.get(endpoint) {
            return Ok(c.clone());
        }
        let e = peer_endpoint(security, connect_timeout, endpoint)?;
        let c = e.connect_lazy();
        g.insert(endpoint.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the channel of an endpoint that failed, so the next call
    /// connects afresh.
    pub(crate) fn forget(&self, endpoint: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
    }
}

/// How this instance reaches another one: TLS for `https://` endpoints
/// with `grpc_security.client_tls` (see `security::client_endpoint`).
fn peer_endpoint(
    security: &GrpcSecurity,
    connect_timeout: Duration,
    url: &str,
) -> Result<Endpoint, QueryError> {
    let e = crate::security::client_endpoint(url, security).map_err(|e| {
        QueryError::Unavailable(format!("cannot reach the partition's owner at {url}: {e}"))
    })?;
    Ok(e.connect_timeout(connect_timeout))
}
