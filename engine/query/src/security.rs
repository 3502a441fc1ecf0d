//! Transport security of the gRPC service: TLS material loaded from
//! [`GrpcSecurity`], the bearer-token check in front of the Query and Admin
//! services, and the endpoints this instance uses to reach other instances
//! when it forwards a call to a partition's owner.
//!
//! Invariants:
//! - Off unless configured: no `server_tls`, plaintext; no tokens, no check.
//! - `strata.v1.Admin` needs an admin token whenever any token is
//!   configured; `strata.v1.Query` needs a read or an admin token when read
//!   tokens are configured. `grpc.health.v1` and server reflection are not
//!   checked: load balancers and orchestrators probe health without
//!   credentials, and reflection only describes the public schema.
//! - Tokens are compared as SHA-256 digests, in time independent of where
//!   they differ and of which configured token matches.
//! - Only configured CAs are trusted, never the system's roots.
//! - A forwarding instance sends the caller's `authorization` metadata
//!   ([`AUTHORIZATION`]) to the owner unchanged, so the owner authorizes the
//!   original caller, not the forwarding instance; forwarding needs no
//!   token of its own. (Client certificates are per instance: under mutual
//!   TLS, the owner sees the forwarding instance's certificate.)
//! - Failures become statuses through `error::to_status`, like every other
//!   query failure.

use std::sync::Arc;
use std::time::Duration;

use ring::digest::{SHA256, digest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use super::error::{QueryError, to_status};
use strata_engine::config::{GrpcSecurity, Pem, TlsIdentity};
use strata_engine::{Error, Result};

/// The metadata key carrying `Bearer <token>`. A forwarding instance copies
/// it from the caller's request to the owner's, unchanged.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// How long a TLS handshake may take, on either side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to another instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings to other instances while forwarded calls are in flight, so
/// a dead peer fails them instead of leaving them to their deadlines.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn read_pem(pem: &Pem, key: &str) -> Result<Vec<u8>> {
    match pem {
        Pem::Bytes(b) => Ok(b.clone()),
        Pem::File(path) => std::fs::read(path)
            .map_err(|e| Error::config(key, format!("cannot read {}: {e}", path.display()))),
    }
}

/// PEM holding at least one certificate, all of them well-formed.
fn certificates(pem: &Pem, key: &str) -> Result<Vec<u8>> {
    let bytes = read_pem(pem, key)?;
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(bytes),
        Ok(_) => Err(Error::config(
            key,
            "holds no `-----BEGIN CERTIFICATE-----` block; give PEM certificates",
        )),
        Err(e) => Err(Error::config(key, format!("is not valid PEM: {e}"))),
    }
}

fn private_key(pem: &Pem, key: &str) -> Result<Vec<u8>> {
    let bytes = read_pem(pem, key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        Error::config(
            key,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok(bytes)
}

fn identity(id: &TlsIdentity, key: &str) -> Result<Identity> {
    let chain = certificates(&id.cert_chain, &format!("{key}.cert_chain"))?;
    let pk = private_key(&id.private_key, &format!("{key}.private_key"))?;
    Ok(Identity::from_pem(chain, pk))
}

/// The server's TLS settings, or `None` when it serves plaintext.
pub(crate) fn server_tls_config(sec: &GrpcSecurity) -> Result<Option<ServerTlsConfig>> {
    let Some(tls) = &sec.server_tls else {
        return Ok(None);
    };
    let mut cfg = ServerTlsConfig::new()
        .identity(identity(
            &tls.identity,
            "grpc_security.server_tls.identity",
        )?)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca {
        let ca = certificates(ca, "grpc_security.server_tls.client_ca")?;
        cfg = cfg.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(cfg))
}

/// A server builder with the configured TLS applied.
pub(crate) fn server_builder(sec: &GrpcSecurity) -> Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = server_tls_config(sec)? else {
        return Ok(builder);
    };
    builder.tls_config(tls).map_err(|e| {
        Error::config(
            "grpc_security.server_tls",
            format!(
                "the certificate chain and private key are not usable together ({}); check the key is the \
                 leaf certificate's",
                error_chain(&e)
            ),
        )
    })
}

/// Client TLS towards other instances, or `None` when not configured.
fn client_tls_config(sec: &GrpcSecurity) -> Result<Option<ClientTlsConfig>> {
    let Some(tls) = &sec.client_tls else {
        return Ok(None);
    };
    let ca = certificates(&tls.ca, "grpc_security.client_tls.ca")?;
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(d) = &tls.domain_name {
        cfg = cfg.domain_name(d.clone());
    }
    if let Some(id) = &tls.identity {
        cfg = cfg.identity(identity(id, "grpc_security.client_tls.identity")?);
    }
    Ok(Some(cfg))
}

/// Loads and checks every piece of TLS material, as the server and the
/// forwarding client would (called by [`GrpcSecurity::validate`]).
pub fn check_tls(sec: &GrpcSecurity) -> Result<()> {
    server_builder(sec)?;
    if let Some(tls) = client_tls_config(sec)? {
        Endpoint::from_static("https://localhost")
            .tls_config(tls)
            .map_err(|e| {
                Error::config(
                    "grpc_security.client_tls",
                    format!(
                        "the CA or client identity is not usable ({})",
                        error_chain(&e)
                    ),
                )
            })?;
    }
    Ok(())
}

/// An endpoint for another instance's advertised `url`: TLS (the configured
/// CA, domain name override and client identity) for `https://`, plaintext
/// for `http://`; with connect and handshake timeouts, TCP_NODELAY and
/// HTTP/2 keepalive. Connecting reads PEM files, so build it once per
/// instance and keep the `Channel` (it reconnects on its own).
///
/// The caller passes the incoming call's [`AUTHORIZATION`] metadata to the
/// owner unchanged.
pub(crate) fn client_endpoint(url: &str, sec: &GrpcSecurity) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| {
        Error::config(
            "advertised_endpoint",
            format!(
                "{url:?} is not a valid endpoint ({e}); use http://host:port or https://host:port"
            ),
        )
    })?;
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    if url.starts_with("http://") {
        return Ok(endpoint);
    }
    if !url.starts_with("https://") {
        return Err(Error::config(
            "advertised_endpoint",
            format!("{url:?}: use http://host:port or https://host:port"),
        ));
    }
    let Some(tls) = client_tls_config(sec)? else {
        return Err(Error::config(
            "grpc_security.client_tls",
            format!(
                "instance {url} is reached over https, but no client TLS is configured: set \
                 grpc_security.client_tls (at least the CA that issued its certificate)"
            ),
        ));
    };
    endpoint.tls_config(tls).map_err(|e| {
        Error::config(
            "grpc_security.client_tls",
            format!(
                "the CA or client identity is not usable ({})",
                error_chain(&e)
            ),
        )
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What a call needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// `strata.v1.Query`.
    Read,
    /// `strata.v1.Admin`.
    Admin,
}

type TokenDigest = [u8; 32];

fn token_digest(token: &[u8]) -> TokenDigest {
    let d = digest(&SHA256, token);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `d` is one of `set`, looking at every byte of every entry.
fn contains(set: &[TokenDigest], d: &TokenDigest) -> bool {
    let mut found = 0u8;
    for t in set {
        let mut diff = 0u8;
        for (a, b) in t.iter().zip(d) {
            diff |= a ^ b;
        }
        found |= u8::from(std::hint::black_box(diff) == 0);
    }
    found == 1
}

/// The configured tokens, as digests.
#[derive(Clone, Debug)]
pub(crate) struct Authenticator {
    read: Arc<[TokenDigest]>,
    admin: Arc<[TokenDigest]>,
}

impl Authenticator {
    pub(crate) fn new(sec: &GrpcSecurity) -> Authenticator {
        let digests = |ts: &[String]| ts.iter().map(|t| token_digest(t.as_bytes())).collect();
        Authenticator {
            read: digests(&sec.read_tokens),
            admin: digests(&sec.admin_tokens),
        }
    }

    /// An interceptor admitting calls that carry what `access` needs.
    pub(crate) fn require(&self, access: Access) -> RequireToken {
        RequireToken {
            auth: self.clone(),
            access,
        }
    }

    fn check(&self, md: &MetadataMap, access: Access) -> std::result::Result<(), QueryError> {
        let enabled = !self.read.is_empty() || !self.admin.is_empty();
        if !enabled || (access == Access::Read && self.read.is_empty()) {
            return Ok(());
        }
        let which = match access {
            Access::Read => "grpc_security.read_tokens or grpc_security.admin_tokens",
            Access::Admin => "grpc_security.admin_tokens",
        };
        let Some(value) = md.get(AUTHORIZATION) else {
            return Err(QueryError::Unauthenticated(format!(
                "this server requires a bearer token: send the metadata `{AUTHORIZATION}: Bearer <token>` \
                 with a token from the server's {which}"
            )));
        };
        let token = value
            .as_bytes()
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, t)| t.trim_ascii())
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(QueryError::Unauthenticated(format!(
                "the `{AUTHORIZATION}` metadata must be `Bearer <token>`, with a token from the server's {which}"
            )));
        };
        let d = token_digest(token);
        let is_admin = contains(&self.admin, &d);
        let is_reader = contains(&self.read, &d);
        match access {
            _ if is_admin => Ok(()),
            Access::Read if is_reader => Ok(()),
            Access::Admin if is_reader => {
                Err(QueryError::PermissionDenied(if self.admin.is_empty() {
                    "strata.v1.Admin calls (Rewind) need an admin token, and this server has none configured: \
                     set grpc_security.admin_tokens on it"
                        .into()
                } else {
                    "strata.v1.Admin calls (Rewind) need an admin token; this token may only read: send a token \
                     from the server's grpc_security.admin_tokens"
                        .into()
                }))
            }
            _ => Err(QueryError::Unauthenticated(format!(
                "the bearer token is not accepted by this server: check it, or have it added to the server's {which}"
            ))),
        }
    }
}

/// Checks the bearer token of each call to one service.
#[derive(Clone, Debug)]
pub(crate) struct RequireToken {
    auth: Authenticator,
    access: Access,
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        match self.auth.check(request.metadata(), self.access) {
            Ok(()) => Ok(request),
            Err(e) => {
                let status = to_status(&e);
                tracing::debug!(access = ?self.access, code = ?status.code(), "call refused");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    const READ: &str = "read-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    fn md(auth: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(a) = auth {
            m.insert(AUTHORIZATION, a.parse().unwrap());
        }
        m
    }

    fn code(a: &Authenticator, auth: Option<&str>, access: Access) -> Option<Code> {
        a.check(&md(auth), access)
            .err()
            .map(|e| to_status(&e).code())
    }

    fn sec(read: &[&str], admin: &[&str]) -> GrpcSecurity {
        GrpcSecurity {
            read_tokens: read.iter().map(|s| s.to_string()).collect(),
            admin_tokens: admin.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_admit_and_refuse_case_by_case() {
        let a = Authenticator::new(&sec(&[READ], &[ADMIN]));
        let bearer = |t: &str| format!("Bearer {t}");
        for access in [Access::Read, Access::Admin] {
            assert_eq!(code(&a, None, access), Some(Code::Unauthenticated));
            assert_eq!(code(&a, Some(READ), access), Some(Code::Unauthenticated));
            assert_eq!(
                code(&a, Some("Bearer "), access),
                Some(Code::Unauthenticated)
            );
            assert_eq!(
                code(&a, Some(&bearer("read-token-012345678")), access),
                Some(Code::Unauthenticated)
            );
            assert_eq!(code(&a, Some(&bearer(ADMIN)), access), None);
        }
        assert_eq!(code(&a, Some(&bearer(READ)), Access::Read), None);
        assert_eq!(
            code(&a, Some(&format!("bearer  {READ} ")), Access::Read),
            None
        );
        assert_eq!(
            code(&a, Some(&bearer(READ)), Access::Admin),
            Some(Code::PermissionDenied)
        );
    }

    #[test]
    fn reads_are_open_without_read_tokens_and_everything_without_tokens() {
        let a = Authenticator::new(&sec(&[], &[ADMIN]));
        assert_eq!(code(&a, None, Access::Read), None);
        assert_eq!(code(&a, None, Access::Admin), Some(Code::Unauthenticated));
        let a = Authenticator::new(&sec(&[READ], &[]));
        let e = a
            .check(&md(Some(&format!("Bearer {READ}"))), Access::Admin)
            .unwrap_err();
        assert_eq!(to_status(&e).code(), Code::PermissionDenied);
        assert!(e.to_string().contains("none configured"), "{e}");
        let a = Authenticator::new(&GrpcSecurity::default());
        assert_eq!(code(&a, None, Access::Admin), None);
    }

    #[test]
    fn refusals_say_what_to_send() {
        let a = Authenticator::new(&sec(&[READ], &[ADMIN]));
        let missing = a.check(&md(None), Access::Read).unwrap_err().to_string();
        assert!(
            missing.contains("authorization: Bearer <token>"),
            "{missing}"
        );
        assert!(missing.contains("grpc_security.read_tokens"), "{missing}");
        let wrong = a
            .check(&md(Some("Bearer nope-nope-nope-nope")), Access::Admin)
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("grpc_security.admin_tokens"), "{wrong}");
        assert!(!wrong.contains("nope"), "the token is not echoed: {wrong}");
    }

    #[test]
    fn digest_set_membership() {
        let set = [token_digest(b"a"), token_digest(b"b")];
        assert!(contains(&set, &token_digest(b"b")));
        assert!(!contains(&set, &token_digest(b"c")));
        assert!(!contains(&[], &token_digest(b"a")));
    }

    #[test]
    fn endpoints_by_scheme() {
        let plain = GrpcSecurity::default();
        assert!(client_endpoint("http://127.0.0.1:7001", &plain).is_ok());
        let e = client_endpoint("https://127.0.0.1:7001", &plain).unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, .. } if key == "grpc_security.client_tls"),
            "{e}"
        );
        let e = client_endpoint("ftp://x:1", &plain).unwrap_err();
        assert!(
            matches!(&e, Error::Config { key, .. } if key == "advertised_endpoint"),
            "{e}"
        );
    }

    /// A CA, a server certificate for 127.0.0.1 and `localhost`, and a
    /// client certificate, as PEM.
    fn pki() -> (String, (String, String), (String, String)) {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
            KeyPair,
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage| {
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(vec!["peer".into()], ExtendedKeyUsagePurpose::ClientAuth);
        (ca.pem(), server, client)
    }

    /// A forwarding client built by `client_endpoint` reaches a server
    /// built by `server_builder` over mutual TLS, by IP and by domain name
    /// override, and is refused without its identity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwarding_endpoints_speak_mutual_tls() {
        use strata_engine::config::{ClientTls, ServerTls};
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let (ca, (cert, key), (ccert, ckey)) = pki();
        let bytes = |s: &str| Pem::Bytes(s.as_bytes().to_vec());
        let id = |c: &str, k: &str| TlsIdentity {
            cert_chain: bytes(c),
            private_key: bytes(k),
        };
        let sec = GrpcSecurity {
            server_tls: Some(ServerTls {
                identity: id(&cert, &key),
                client_ca: Some(bytes(&ca)),
            }),
            client_tls: Some(ClientTls {
                ca: bytes(&ca),
                domain_name: None,
                identity: Some(id(&ccert, &ckey)),
            }),
            ..Default::default()
        };
        sec.validate().unwrap();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            server_builder(&sec)
                .unwrap()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        let url = format!("https://{addr}");
        let check = |sec: GrpcSecurity| {
            let url = url.clone();
            async move {
                let ch = client_endpoint(&url, &sec)
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status)
                    .map_err(|s| format!("{s:?}"))
            }
        };
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        assert_eq!(check(sec.clone()).await, Ok(serving));
        let mut by_name = sec.clone();
        by_name.client_tls.as_mut().unwrap().domain_name = Some("localhost".into());
        assert_eq!(check(by_name).await, Ok(serving));
        let mut wrong_name = sec.clone();
        wrong_name.client_tls.as_mut().unwrap().domain_name = Some("elsewhere.example".into());
        assert!(check(wrong_name).await.is_err());
        let mut anonymous = sec.clone();
        anonymous.client_tls.as_mut().unwrap().identity = None;
        assert!(check(anonymous).await.is_err());
        let plaintext = client_endpoint(&format!("http://{addr}"), &sec).unwrap();
        let refused = match plaintext.connect().await {
            Ok(ch) => HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .is_err(),
            Err(_) => true,
        };
        assert!(refused, "a TLS server answered plaintext");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
