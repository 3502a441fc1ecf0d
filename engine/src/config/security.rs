//! The gRPC server's and forwarding client's security settings: TLS
//! material and bearer tokens (checked here; the TLS material is loaded
//! and checked by the query crate).

use std::path::PathBuf;

use crate::{Error, Result};

/// PEM text (certificates or a private key), from a file or in memory.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// Read from this file when the app is built (to check it) and again
    /// when the server or a forwarding connection starts.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for Pem {
    // In-memory PEM may be a private key: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => f.debug_tuple("File").field(p).finish(),
            Pem::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
        }
    }
}

/// A certificate chain (leaf first) and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsIdentity {
    /// The chain, as `CERTIFICATE` PEM blocks, leaf first.
    pub cert_chain: Pem,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub private_key: Pem,
}

/// TLS on the gRPC server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// What the server presents.
    pub identity: TlsIdentity,
    /// When set, mutual TLS: clients must present a certificate issued by
    /// one of these CAs, or the handshake fails.
    pub client_ca: Option<Pem>,
}

/// TLS of this instance's connections to other instances (forwarding to
/// the owner of a partition), used for `https://` endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CAs trusted to have issued the other instances' certificates.
    /// Only these: the system's roots are never trusted implicitly.
    pub ca: Pem,
    /// The name to verify in the other instances' certificates, instead of
    /// the host of their advertised endpoint (useful when instances
    /// advertise IP addresses but share a certificate for a DNS name).
    pub domain_name: Option<String>,
    /// The certificate this instance presents, for servers that require
    /// mutual TLS.
    pub identity: Option<TlsIdentity>,
}

/// TLS and bearer tokens of the gRPC server and of forwarding between
/// instances. Everything is off by default, which suits a server on
/// loopback; see `docs/security.md` to turn it on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GrpcSecurity {
    /// TLS on the server. `None`: plaintext HTTP/2.
    pub server_tls: Option<ServerTls>,
    /// TLS towards other instances. Needed when they advertise `https://`.
    pub client_tls: Option<ClientTls>,
    /// Tokens that may call `strata.v1.Query`. When empty, Query calls
    /// need no token.
    pub read_tokens: Vec<String>,
    /// Tokens that may call everything, `strata.v1.Admin` (Rewind)
    /// included. When any token is configured, Admin calls need one of
    /// these.
    pub admin_tokens: Vec<String>,
}

impl std::fmt::Debug for GrpcSecurity {
    // Tokens are secrets: print how many, never what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcSecurity")
            .field("server_tls", &self.server_tls)
            .field("client_tls", &self.client_tls)
            .field("read_tokens", &format_args!("<{}>", self.read_tokens.len()))
            .field(
                "admin_tokens",
                &format_args!("<{}>", self.admin_tokens.len()),
            )
            .finish()
    }
}

/// Shortest bearer token accepted: a guessable token protects nothing.
pub const MIN_TOKEN_LEN: usize = 16;

impl GrpcSecurity {
    /// Whether calls need a bearer token at all.
    pub fn tokens_enabled(&self) -> bool {
        !self.read_tokens.is_empty() || !self.admin_tokens.is_empty()
    }

    /// Checks tokens and names, naming the offending key
    /// (`grpc_security.…`). The TLS material itself (reading and parsing
    /// the PEM as the server and the forwarding client would) is checked
    /// by the query server's crate (`strata_query::check_tls`), which
    /// `strata::App::new` calls after this.
    pub fn validate(&self) -> Result<()> {
        let lists = [
            ("grpc_security.read_tokens", &self.read_tokens),
            ("grpc_security.admin_tokens", &self.admin_tokens),
        ];
        for (key, tokens) in lists {
            for (i, t) in tokens.iter().enumerate() {
                // Visible ASCII: it travels as `authorization: Bearer <token>`.
                if t.len() < MIN_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Error::config(
                        format!("{key}[{i}]"),
                        format!(
                            "use at least {MIN_TOKEN_LEN} visible ASCII characters without spaces \
                             (for example 32 random hex digits: `openssl rand -hex 16`)"
                        ),
                    ));
                }
            }
        }
        if let Some(i) = self
            .read_tokens
            .iter()
            .position(|t| self.admin_tokens.contains(t))
        {
            return Err(Error::config(
                format!("grpc_security.read_tokens[{i}]"),
                "is also in grpc_security.admin_tokens (admin tokens may already read); list it once",
            ));
        }
        if let Some(c) = &self.client_tls
            && let Some(d) = &c.domain_name
            && rustls_pki_types::ServerName::try_from(d.as_str()).is_err()
        {
            return Err(Error::config(
                "grpc_security.client_tls.domain_name",
                format!("{d:?} is not a DNS name or IP address"),
            ));
        }
        Ok(())
    }
}
