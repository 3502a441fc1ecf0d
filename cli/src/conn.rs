//! The connection to one Strata instance: endpoint, TLS, bearer token and
//! deadline, and the per-request options every call carries.

use std::time::Duration;

use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::cli::Global;
use crate::error::CliError;

/// An open channel to an instance, with what each request must carry.
pub struct Conn {
    /// The endpoint as the user gave it, for messages.
    pub endpoint: String,
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
    timeout: Duration,
    allow_stale: bool,
}

impl Conn {
    /// Connects to `--endpoint`, with TLS for `https://` endpoints (trusting
    /// `--ca-cert`, or the system's roots without it).
    pub async fn open(g: &Global) -> Result<Conn, CliError> {
        let endpoint = g.endpoint.trim_end_matches('/').to_string();
        let mut ep = Endpoint::from_shared(endpoint.clone()).map_err(|e| {
            CliError::Usage(format!(
                "--endpoint `{endpoint}` is not a URL ({e}); write e.g. http://127.0.0.1:50051"
            ))
        })?;
        let https = endpoint.starts_with("https://");
        if let Some(path) = &g.ca_cert {
            if !https {
                return Err(CliError::Usage(format!(
                    "--ca-cert needs an https:// endpoint, not `{endpoint}`"
                )));
            }
            let pem = std::fs::read(path).map_err(|e| {
                CliError::Usage(format!("cannot read --ca-cert {}: {e}", path.display()))
            })?;
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| CliError::Usage(format!("TLS setup for {endpoint}: {e}")))?;
        } else if https {
            ep = ep
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| CliError::Usage(format!("TLS setup for {endpoint}: {e}")))?;
        }
        let authorization = match &g.token {
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                CliError::Usage("--token holds characters a header cannot carry".into())
            })?),
            None => None,
        };
        let channel = ep
            .connect_timeout(g.timeout.min(Duration::from_secs(10)))
            .connect()
            .await
            .map_err(|e| CliError::Connect {
                endpoint: endpoint.clone(),
                cause: chain(&e),
            })?;
        Ok(Conn {
            endpoint,
            channel,
            authorization,
            timeout: g.timeout,
            allow_stale: g.allow_stale,
        })
    }

    /// A Query client on the channel.
    pub fn query(&self) -> QueryClient<Channel> {
        QueryClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// An Admin client on the channel.
    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// A unary request: the token and the deadline (`grpc-timeout`).
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = self.stream_request(msg);
        r.set_timeout(self.timeout);
        r
    }

    /// A streaming request: the token, no deadline (a feed runs until
    /// stopped).
    pub fn stream_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    /// The routing options of every request.
    pub fn options(&self) -> Option<pb::RequestOptions> {
        Some(pb::RequestOptions {
            allow_stale: self.allow_stale,
            ..Default::default()
        })
    }

    /// Wraps a failed call's status.
    pub fn fail(&self, status: tonic::Status) -> CliError {
        CliError::Status {
            status,
            endpoint: self.endpoint.clone(),
        }
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
