//! Security of the gRPC services on the embedded cluster: bearer tokens
//! (read and admin) in front of Query and Admin with health and reflection
//! open, server TLS, mutual TLS, and the validation of `grpc_security`.
//!
//! Certificates are made in the test with `rcgen`: a CA, a server
//! certificate for `localhost` and 127.0.0.1, client certificates, and a
//! second, unrelated CA.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use strata::config::{ClientTls, GrpcSecurity, Pem, ServerTls, TlsIdentity};
use strata::{App, AppConfig, EmbeddedKafka, Error, RunningApp};
use strata_proto::v1 as pb;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::query_client::QueryClient;
use strata_test_support::grpc::{assert_serving, config, list_services, now_ms, sums_topology};
use strata_test_support::produce::produce_numbers;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const PARTITIONS: u32 = 2;
const READ: &str = "read-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// A running app, configured by `configure`, whose `sums` will read
/// {a: 1, b: 2}.
struct Running {
    kafka: EmbeddedKafka,
    _state: tempfile::TempDir,
    app: RunningApp,
}

fn start(name: &str, configure: impl FnOnce(&mut AppConfig)) -> Running {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(&kafka, name, state.path());
    configure(&mut cfg);
    kafka
        .create_app_topics(&cfg, &sums_topology(), PARTITIONS)
        .unwrap();
    produce_numbers(&kafka.bootstrap_servers(), &[("a", 1), ("b", 2)]);
    let app = tokio::task::block_in_place(|| {
        let app = App::new(cfg).unwrap().start(sums_topology()).unwrap();
        app.wait_running(PARTITIONS as usize, Duration::from_secs(60))
            .unwrap();
        app
    });
    Running {
        kafka,
        _state: state,
        app,
    }
}

fn get(k: &str) -> pb::GetRequest {
    pb::GetRequest {
        table: "sums".into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson(format!("{k:?}"))),
        ..Default::default()
    }
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn value(r: &pb::GetResponse) -> Option<String> {
    match r.outcome.as_ref()? {
        pb::get_response::Outcome::Found(e) => Some(e.value_json.clone()),
        pb::get_response::Outcome::Absent(_) => None,
    }
}

/// Polls Get until `k` reads `want`.
async fn wait_value(q: &mut QueryClient<Channel>, k: &str, want: &str, token: Option<&str>) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match q.get(with_token(get(k), token)).await {
            Ok(r) if value(r.get_ref()).as_deref() == Some(want) => return,
            Ok(_) => {}
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "{}", s.message()),
        }
        assert!(Instant::now() < end, "{k} never read {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), s.message().to_string())
}

async fn plain(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn rewind_to(t: u64, dry_run: bool) -> pb::RewindRequest {
    pb::RewindRequest {
        table: "sums".into(),
        keys: Some(pb::KeyFilter {
            filter: Some(pb::key_filter::Filter::KeyJson("\"a\"".into())),
        }),
        to: Some(pb::At {
            point: Some(pb::at::Point::TimeMs(t)),
        }),
        dry_run,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_query_and_admin_but_not_health_or_reflection() {
    let r = start("tokens", |c| {
        c.grpc_security.read_tokens = vec![READ.into()];
        c.grpc_security.admin_tokens = vec![ADMIN.into()];
    });
    let addr = r.app.grpc_addr().unwrap();
    let ch = plain(addr).await;
    let mut q = QueryClient::new(ch.clone());
    let mut admin = AdminClient::new(ch.clone());
    wait_value(&mut q, "a", "1", Some(READ)).await;
    let t_mid = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    produce_numbers(&r.kafka.bootstrap_servers(), &[("a", 10)]);
    wait_value(&mut q, "a", "11", Some(READ)).await;

    // Query: no token, a malformed or unknown token: UNAUTHENTICATED,
    // saying what to send. Read and admin tokens read.
    let (c, m) = refused(q.get(get("a")).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("authorization: Bearer <token>"), "{m}");
    assert!(m.contains("grpc_security.read_tokens"), "{m}");
    let (c, m) = refused(
        q.get(with_token(get("a"), Some("not-a-token-0123456789")))
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(!m.contains("not-a-token"), "the token is not echoed: {m}");
    let mut basic = tonic::Request::new(get("a"));
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {READ}").parse().unwrap());
    let (c, m) = refused(q.get(basic).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("Bearer <token>"), "{m}");
    let (c, _) = refused(
        q.list_tables(with_token(pb::ListTablesRequest::default(), None))
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "every Query RPC is guarded");
    for t in [READ, ADMIN] {
        let got = q.get(with_token(get("a"), Some(t))).await.unwrap();
        assert_eq!(value(got.get_ref()).as_deref(), Some("11"));
    }

    // Admin: no token UNAUTHENTICATED; a read token PERMISSION_DENIED
    // (saying an admin token is needed); an admin token rewinds.
    let (c, m) = refused(admin.rewind(with_token(rewind_to(t_mid, true), None)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("grpc_security.admin_tokens"), "{m}");
    let (c, m) = refused(
        admin
            .rewind(with_token(rewind_to(t_mid, false), Some(READ)))
            .await,
    );
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(m.contains("admin token"), "{m}");
    let got = q.get(with_token(get("a"), Some(READ))).await.unwrap();
    assert_eq!(
        value(got.get_ref()).as_deref(),
        Some("11"),
        "a refused rewind changes nothing"
    );
    let done = admin
        .rewind(with_token(rewind_to(t_mid, false), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.partitions[0].status,
        pb::RewindStatus::Applied as i32,
        "{done:?}"
    );
    let got = q.get(with_token(get("a"), Some(READ))).await.unwrap();
    assert_eq!(value(got.get_ref()).as_deref(), Some("1"), "rewound");

    // The transport statuses are still remapped once authenticated; an
    // unauthenticated oversized request is refused before it is read.
    let big = || pb::GetRequest {
        table: "sums".into(),
        key_ref: Some(pb::get_request::KeyRef::KeyJson("x".repeat(2 << 20))),
        ..Default::default()
    };
    let (c, m) = refused(q.get(with_token(big(), Some(READ))).await);
    assert_eq!(c, Code::ResourceExhausted, "{m}");
    let (c, m) = refused(q.get(with_token(big(), None)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");

    // Health and reflection need no token.
    assert_serving(ch.clone()).await;
    let listed = format!("{:?}", list_services(ch.clone()).await);
    assert!(listed.contains("strata.v1.Admin"), "{listed}");

    drop((q, admin, ch));
    tokio::task::block_in_place(move || r.app.shutdown().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_alone_leave_reads_open() {
    let r = start("admin-only", |c| {
        c.grpc_security.admin_tokens = vec![ADMIN.into()];
    });
    let ch = plain(r.app.grpc_addr().unwrap()).await;
    let mut q = QueryClient::new(ch.clone());
    wait_value(&mut q, "b", "2", None).await;
    let mut admin = AdminClient::new(ch);
    let (c, m) = refused(
        admin
            .rewind(with_token(rewind_to(now_ms(), true), None))
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    let plan = admin
        .rewind(with_token(rewind_to(now_ms(), true), Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    assert!(plan.dry_run);
    drop((q, admin));
    tokio::task::block_in_place(move || r.app.shutdown().unwrap());
}

/// A CA and what it issues.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// PEM certificate and key.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The outcome of a Get through `endpoint`: `Ok(value)` or why it failed
/// (connecting or calling).
async fn get_over(endpoint: Endpoint, k: &str) -> Result<Option<String>, String> {
    let ch = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let r = QueryClient::new(ch)
        .get(get(k))
        .await
        .map_err(|s| format!("call: {s:?}"))?;
    Ok(value(r.get_ref()))
}

fn tls_endpoint(url: String, tls: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_only_them() {
    let ca = Ca::new("strata test ca");
    let server = ca.server();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("server.key");
    std::fs::write(&key_file, &server.key).unwrap();
    let r = start("tls", |c| {
        c.grpc_security.server_tls = Some(ServerTls {
            identity: TlsIdentity {
                cert_chain: Pem::Bytes(server.cert.clone().into_bytes()),
                private_key: Pem::File(key_file.clone()),
            },
            client_ca: None,
        });
    });
    let port = r.app.grpc_addr().unwrap().port();
    let trusting = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));

    // Trusting the CA, by IP address and by name: answers.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_over(
            tls_endpoint(format!("https://127.0.0.1:{port}"), trusting()),
            "b",
        )
        .await;
        if v == Ok(Some("2".into())) {
            break;
        }
        assert!(Instant::now() < end, "no answer over TLS: {v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_name = get_over(
        tls_endpoint(
            format!("https://127.0.0.1:{port}"),
            trusting().domain_name("localhost"),
        ),
        "b",
    )
    .await;
    assert_eq!(by_name, Ok(Some("2".into())));

    // Plaintext, another CA, or a name the certificate does not hold: no
    // answer.
    let plaintext = get_over(
        Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5)),
        "b",
    )
    .await;
    assert!(plaintext.is_err(), "{plaintext:?}");
    let other = Ca::new("another ca");
    let untrusted = get_over(
        tls_endpoint(
            format!("https://127.0.0.1:{port}"),
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.pem())),
        ),
        "b",
    )
    .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
    let wrong_name = get_over(
        tls_endpoint(
            format!("https://127.0.0.1:{port}"),
            trusting().domain_name("elsewhere.example"),
        ),
        "b",
    )
    .await;
    assert!(wrong_name.is_err(), "{wrong_name:?}");

    tokio::task::block_in_place(move || r.app.shutdown().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let ca = Ca::new("strata test ca");
    let server = ca.server();
    let r = start("mtls", |c| {
        c.grpc_security.server_tls = Some(ServerTls {
            identity: TlsIdentity {
                cert_chain: Pem::Bytes(server.cert.clone().into_bytes()),
                private_key: Pem::Bytes(server.key.clone().into_bytes()),
            },
            client_ca: Some(Pem::Bytes(ca.pem().into_bytes())),
        });
    });
    let url = format!("https://127.0.0.1:{}", r.app.grpc_addr().unwrap().port());
    let trusting = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    let me = ca.client("operator");
    let with_cert = || trusting().identity(Identity::from_pem(&me.cert, &me.key));

    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_over(tls_endpoint(url.clone(), with_cert()), "b").await;
        if v == Ok(Some("2".into())) {
            break;
        }
        assert!(Instant::now() < end, "no answer over mutual TLS: {v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let no_cert = get_over(tls_endpoint(url.clone(), trusting()), "b").await;
    assert!(no_cert.is_err(), "{no_cert:?}");
    let stranger = Ca::new("another ca").client("stranger");
    let foreign = get_over(
        tls_endpoint(
            url.clone(),
            trusting().identity(Identity::from_pem(&stranger.cert, &stranger.key)),
        ),
        "b",
    )
    .await;
    assert!(foreign.is_err(), "{foreign:?}");

    tokio::task::block_in_place(move || r.app.shutdown().unwrap());
}

/// The configuration error starting an app with `cfg` meets: the engine's
/// checks, then the TLS material as the query server loads it.
fn invalid_key(cfg: &AppConfig) -> (String, String) {
    match App::new(cfg.clone()).map(drop) {
        Err(Error::Config { key, reason }) => (key, reason),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn security_config_is_validated_naming_the_key() {
    let ca = Ca::new("strata test ca");
    let server = ca.server();
    let base = || {
        let mut c = AppConfig::new("sec", "127.0.0.1:9092");
        c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        c
    };
    let identity = |cert: &str, key: &str| TlsIdentity {
        cert_chain: Pem::Bytes(cert.as_bytes().to_vec()),
        private_key: Pem::Bytes(key.as_bytes().to_vec()),
    };
    let server_tls = |id: TlsIdentity| {
        Some(ServerTls {
            identity: id,
            client_ca: None,
        })
    };
    let client_tls = || {
        Some(ClientTls {
            ca: Pem::Bytes(ca.pem().into_bytes()),
            domain_name: None,
            identity: None,
        })
    };

    // Off by default, and a complete setup passes.
    base().validate().unwrap();
    assert_eq!(base().grpc_security, GrpcSecurity::default());
    let mut ok = base();
    ok.advertised_endpoint = Some("https://127.0.0.1:7001".into());
    ok.grpc_security.server_tls = server_tls(identity(&server.cert, &server.key));
    ok.grpc_security.client_tls = client_tls();
    ok.grpc_security.read_tokens = vec![READ.into()];
    ok.grpc_security.admin_tokens = vec![ADMIN.into()];
    ok.validate().unwrap();
    let printed = format!("{:?}", ok.grpc_security);
    assert!(
        !printed.contains(READ) && !printed.contains("PRIVATE KEY"),
        "secrets stay out of Debug: {printed}"
    );

    type Edit<'a> = Box<dyn Fn(&mut AppConfig) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "grpc_security.server_tls.identity.private_key",
            Box::new(|c| {
                c.grpc_security.server_tls = server_tls(TlsIdentity {
                    cert_chain: Pem::Bytes(server.cert.clone().into_bytes()),
                    private_key: Pem::File("/nonexistent/strata/server.key".into()),
                })
            }),
        ),
        (
            "grpc_security.server_tls.identity.cert_chain",
            Box::new(|c| {
                c.grpc_security.server_tls = server_tls(identity("not a certificate", &server.key))
            }),
        ),
        (
            "grpc_security.server_tls.identity.private_key",
            Box::new(|c| {
                c.grpc_security.server_tls = server_tls(identity(&server.cert, &server.cert))
            }),
        ),
        (
            "grpc_security.server_tls",
            Box::new(|c| {
                let stranger = Ca::new("other").server();
                c.grpc_security.server_tls = server_tls(identity(&server.cert, &stranger.key))
            }),
        ),
        (
            "grpc_security.client_tls.ca",
            Box::new(|c| {
                c.grpc_security.client_tls = Some(ClientTls {
                    ca: Pem::Bytes(server.key.clone().into_bytes()),
                    domain_name: None,
                    identity: None,
                })
            }),
        ),
        (
            "grpc_security.client_tls.domain_name",
            Box::new(|c| {
                c.grpc_security.client_tls = Some(ClientTls {
                    ca: Pem::Bytes(ca.pem().into_bytes()),
                    domain_name: Some("not a name".into()),
                    identity: None,
                })
            }),
        ),
        (
            "grpc_security.read_tokens[0]",
            Box::new(|c| c.grpc_security.read_tokens = vec!["short".into()]),
        ),
        (
            "grpc_security.admin_tokens[1]",
            Box::new(|c| {
                c.grpc_security.admin_tokens = vec![ADMIN.into(), format!("{ADMIN} with spaces")]
            }),
        ),
        (
            "grpc_security.read_tokens[0]",
            Box::new(|c| {
                c.grpc_security.read_tokens = vec![ADMIN.into()];
                c.grpc_security.admin_tokens = vec![ADMIN.into()];
            }),
        ),
        (
            "grpc_security.server_tls",
            Box::new(|c| {
                c.advertised_endpoint = Some("https://127.0.0.1:7001".into());
                c.grpc_security.client_tls = client_tls();
            }),
        ),
        (
            "grpc_security.client_tls",
            Box::new(|c| {
                c.advertised_endpoint = Some("https://127.0.0.1:7001".into());
                c.grpc_security.server_tls = server_tls(identity(&server.cert, &server.key));
            }),
        ),
        (
            "advertised_endpoint",
            Box::new(|c| {
                c.advertised_endpoint = Some("http://127.0.0.1:7001".into());
                c.grpc_security.server_tls = server_tls(identity(&server.cert, &server.key));
            }),
        ),
    ];
    for (want, edit) in cases {
        let mut c = base();
        edit(&mut c);
        let (key, reason) = invalid_key(&c);
        assert_eq!(key, want, "{reason}");
        assert!(
            !reason.contains(READ) && !reason.contains(ADMIN),
            "{reason}"
        );
    }
}

/// Two instances with mutual TLS between them and tokens: a request to
/// either instance for a key the other owns is forwarded over TLS with the
/// caller's token, and the owner's verdict on that token stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_between_instances_uses_tls_and_the_callers_token() {
    let ca = Ca::new("strata test ca");
    let server = ca.server();
    let peer = ca.client("strata-peer");
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("events", PARTITIONS).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let secure = |c: &mut AppConfig, id: &str| {
        c.instance_id = Some(id.into());
        c.grpc_security = GrpcSecurity {
            server_tls: Some(ServerTls {
                identity: TlsIdentity {
                    cert_chain: Pem::Bytes(server.cert.clone().into_bytes()),
                    private_key: Pem::Bytes(server.key.clone().into_bytes()),
                },
                client_ca: Some(Pem::Bytes(ca.pem().into_bytes())),
            }),
            client_tls: Some(ClientTls {
                ca: Pem::Bytes(ca.pem().into_bytes()),
                domain_name: None,
                identity: Some(TlsIdentity {
                    cert_chain: Pem::Bytes(peer.cert.clone().into_bytes()),
                    private_key: Pem::Bytes(peer.key.clone().into_bytes()),
                }),
            }),
            read_tokens: vec![READ.into()],
            admin_tokens: vec![ADMIN.into()],
        };
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca_cfg = config(&kafka, "secure-pair", sa.path());
    secure(&mut ca_cfg, "a");
    let mut cb_cfg = config(&kafka, "secure-pair", sb.path());
    secure(&mut cb_cfg, "b");
    kafka
        .create_app_topics(&ca_cfg, &sums_topology(), PARTITIONS)
        .unwrap();
    let recs: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), 5)).collect();
    produce_numbers(&kafka.bootstrap_servers(), &recs);
    let (a, b) = tokio::task::block_in_place(|| {
        let a = App::new(ca_cfg).unwrap().start(sums_topology()).unwrap();
        a.wait_running(PARTITIONS as usize, Duration::from_secs(60))
            .unwrap();
        let b = App::new(cb_cfg).unwrap().start(sums_topology()).unwrap();
        let end = Instant::now() + Duration::from_secs(90);
        // Settled: one partition each, both directories agreeing.
        loop {
            let owns = |app: &RunningApp| {
                (0..PARTITIONS).any(|p| {
                    app.registry()
                        .reader("sums", strata_state::Partition(p))
                        .is_some()
                })
            };
            let agreed = [&a, &b].iter().all(|app| {
                (0..PARTITIONS).all(|p| {
                    let local_a = a
                        .registry()
                        .reader("sums", strata_state::Partition(p))
                        .is_some();
                    let local_b = b
                        .registry()
                        .reader("sums", strata_state::Partition(p))
                        .is_some();
                    let want = if local_a { "a" } else { "b" };
                    local_a != local_b
                        && app
                            .directory()
                            .owner(strata_state::Partition(p))
                            .is_some_and(|o| o.member == want && o.endpoint.starts_with("https://"))
                })
            });
            if owns(&a) && owns(&b) && agreed {
                break;
            }
            assert!(Instant::now() < end, "no settled assignment");
            std::thread::sleep(Duration::from_millis(100));
        }
        (a, b)
    });
    let trusting = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    let me = ca.client("test-client");
    let client = trusting
        .clone()
        .identity(Identity::from_pem(me.cert.clone(), me.key.clone()));
    for (app, name) in [(&a, "a"), (&b, "b")] {
        let url = format!("https://127.0.0.1:{}", app.grpc_addr().unwrap().port());
        let ch = tls_endpoint(url, client.clone()).connect().await.unwrap();
        let mut q = QueryClient::new(ch.clone());
        let mut adm = AdminClient::new(ch);
        let mut hops = BTreeMap::new();
        for k in &keys {
            wait_value(&mut q, k, "5", Some(READ)).await;
            let r = q
                .get(with_token(get(k), Some(READ)))
                .await
                .unwrap()
                .into_inner();
            let s = r.served.unwrap();
            *hops.entry(s.hops).or_insert(0) += 1;
            assert_eq!(
                s.hops,
                u32::from(s.instance.unwrap().id != name),
                "{k} via {name}"
            );
        }
        assert!(hops.len() == 2, "some keys local, some forwarded: {hops:?}");
        let remote = keys
            .iter()
            .find(|k| {
                app.registry()
                    .reader(
                        "sums",
                        app.partition_of("sums", k.as_bytes()).expect("routable"),
                    )
                    .is_none()
            })
            .unwrap();
        // No token: refused before forwarding.
        let (code, _) = refused(q.get(get(remote)).await);
        assert_eq!(code, Code::Unauthenticated);
        // A read token may not rewind, wherever the key lives.
        let one = pb::RewindRequest {
            keys: Some(pb::KeyFilter {
                filter: Some(pb::key_filter::Filter::KeyJson(format!("{remote:?}"))),
            }),
            ..rewind_to(1, true)
        };
        let (code, _) = refused(adm.rewind(with_token(one.clone(), Some(READ))).await);
        assert_eq!(code, Code::PermissionDenied);
        // An admin token's dry run is planned by the owner.
        let r = adm
            .rewind(with_token(one, Some(ADMIN)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.partitions.len(), 1);
        assert_eq!(
            r.partitions[0].status,
            pb::RewindStatus::Planned as i32,
            "{r:?}"
        );
    }
    // A peer without a client certificate is refused by the owner: the
    // forwarding itself is authenticated (mutual TLS).
    let bare = tls_endpoint(
        format!("https://127.0.0.1:{}", a.grpc_addr().unwrap().port()),
        trusting,
    );
    assert!(get_over(bare, "key-1").await.is_err());
    tokio::task::block_in_place(move || {
        b.shutdown().unwrap();
        a.shutdown().unwrap();
    });
}
