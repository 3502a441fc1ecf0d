//! What the gRPC tests share: the per-key sums topology they query, the
//! config of an app serving gRPC on the embedded cluster, the wall clock
//! for time-travel reads, and checking health and reflection.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_engine::serde::{Utf8, json};
use strata_engine::{AppConfig, EmbeddedKafka, TableOptions, Topology};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// `sums`: the per-key sum of the numbers in `events`.
pub fn sums_topology() -> Topology {
    let t = Topology::new();
    t.stream("events", Utf8, json::<i64>()).aggregate(
        "sums",
        TableOptions::default(),
        |_k, v: i64, old: Option<i64>| Some(old.unwrap_or(0) + v),
    );
    t
}

/// App `app` on `kafka`, its topics made by the test, serving gRPC on a
/// free loopback port, with 1 MiB messages.
pub fn config(kafka: &EmbeddedKafka, app: &str, state: &Path) -> AppConfig {
    let mut c = AppConfig::new(app, kafka.bootstrap_servers());
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.manage_topics = false;
    c.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    c.query.max_message_bytes = 1 << 20;
    c
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Asserts that health over `ch` reports the server and both Strata
/// services SERVING.
pub async fn assert_serving(ch: Channel) {
    let mut health = HealthClient::new(ch);
    for service in ["", "strata.v1.Query", "strata.v1.Admin"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

/// The server's answer to a reflection ListServices request over `ch`.
pub async fn list_services(ch: Channel) -> ServerReflectionResponse {
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tonic::codegen::tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap()
}
