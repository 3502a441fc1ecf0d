//! Tests of [`Tansu`] against the real broker binary.
//!
//! These need tansu installed (`scripts/install-tansu.sh`); without it they
//! fail with the error that says so, they do not skip. Besides the handle's
//! own behaviour, some pin down what tansu 0.6.0 itself does (found by
//! experiment), so that a change of version that alters it is noticed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::*;

/// Starts a broker, panicking with the error's message (not its `Debug`).
fn start() -> Tansu {
    Tansu::start().unwrap_or_else(|e| panic!("could not start tansu: {e}"))
}

/// Sends a Kafka ApiVersions v0 request and returns the API keys the broker
/// lists, checking the correlation id and error code of the response.
fn api_versions(bootstrap: &str) -> Vec<i16> {
    let mut stream = TcpStream::connect(bootstrap).expect("connect to broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    let client_id = b"strata-testkit";
    let correlation_id: i32 = 0x5717_a7a0;
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api_key: ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // api_version 0
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream
        .write_all(&request)
        .expect("send ApiVersions request");

    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("read response length");
    let len = usize::try_from(i32::from_be_bytes(len)).expect("non-negative length");
    assert!(
        (10..1 << 20).contains(&len),
        "implausible response length {len}"
    );
    let mut resp = vec![0u8; len];
    stream.read_exact(&mut resp).expect("read response");

    let i16_at = |at: usize| i16::from_be_bytes([resp[at], resp[at + 1]]);
    let i32_at =
        |at: usize| i32::from_be_bytes([resp[at], resp[at + 1], resp[at + 2], resp[at + 3]]);
    assert_eq!(i32_at(0), correlation_id, "correlation id");
    assert_eq!(i16_at(4), 0, "ApiVersions error code");
    let count = usize::try_from(i32_at(6)).expect("non-negative array length");
    assert_eq!(resp.len(), 10 + 6 * count, "ApiVersions v0 response size");
    (0..count).map(|i| i16_at(10 + 6 * i)).collect()
}

/// `(name, partition count)` of every topic, parsed from `tansu topic list`.
fn topics(broker: &Tansu) -> Vec<(String, usize)> {
    let url = broker.broker_url();
    let json = broker
        .run_cli(&["topic", "list", "--broker", &url])
        .unwrap_or_else(|e| panic!("{e}"));
    // The output is one JSON array of topic objects; pull out names and count
    // partition entries without a JSON dependency.
    let mut out = Vec::new();
    for chunk in json.split("\"name\":\"").skip(1) {
        let name = chunk.split('"').next().unwrap_or_default().to_owned();
        let partitions = chunk.matches("\"partition_index\":").count();
        out.push((name, partitions));
    }
    out.sort();
    out
}

#[test]
fn starts_speaks_kafka_and_creates_topics() {
    let broker = start();
    let bootstrap = broker.bootstrap();
    assert_eq!(bootstrap, format!("127.0.0.1:{}", broker.port()));
    TcpStream::connect(&bootstrap).expect("TCP connect to the bootstrap address");

    let keys = api_versions(&bootstrap);
    for key in [0, 1, 3, 19] {
        // Produce, Fetch, Metadata, CreateTopics.
        assert!(keys.contains(&key), "api key {key} missing from {keys:?}");
    }

    broker
        .create_topic("orders", 4)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .create_topic("a.b_c-1", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        topics(&broker),
        vec![("a.b_c-1".to_owned(), 1), ("orders".to_owned(), 4)]
    );

    let tail = broker.log_tail(10);
    assert!(
        tail.contains(&format!("listening on: tcp://{bootstrap}")),
        "log tail: {tail}"
    );
    assert!(!tail.contains('\u{1b}'), "log has colour codes: {tail:?}");
}

#[test]
fn creating_an_existing_topic_fails_with_tansus_message() {
    let broker = start();
    broker
        .create_topic("twice", 2)
        .unwrap_or_else(|e| panic!("{e}"));
    match broker.create_topic("twice", 2) {
        Err(Error::CommandFailed { status, output, .. }) => {
            assert_eq!(status.code(), Some(1), "output: {output}");
            assert!(
                output.contains("Topic with this name already exists."),
                "output: {output}"
            );
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    // Also with a different partition count; the original is unchanged.
    assert!(matches!(
        broker.create_topic("twice", 5),
        Err(Error::CommandFailed { .. })
    ));
    assert_eq!(topics(&broker), vec![("twice".to_owned(), 2)]);
}

#[test]
fn bad_arguments_are_rejected_before_reaching_tansu() {
    let broker = start();
    let long = "x".repeat(250);
    for (name, partitions) in [
        ("zero", 0),
        ("huge", u32::MAX),
        ("", 1),
        (".", 1),
        ("..", 1),
        ("bad name", 1),
        ("a/b", 1),
        (long.as_str(), 1),
    ] {
        match broker.create_topic(name, partitions) {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{name:?}/{partitions}: expected InvalidArgument, got {other:?}"),
        }
    }
    // A leading dash is legal in Kafka and must not be taken for a flag.
    broker
        .create_topic("-dash", 3)
        .unwrap_or_else(|e| panic!("{e}"));
    broker
        .create_topic(&"y".repeat(249), 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        topics(&broker),
        vec![("-dash".to_owned(), 3), ("y".repeat(249), 1)]
    );
}

/// What tansu 0.6.0's CLI does with the arguments `create_topic` refuses:
/// it accepts them, which is why `create_topic` checks them itself.
#[test]
fn tansu_cli_itself_accepts_what_kafka_would_refuse() {
    let broker = start();
    let url = broker.broker_url();
    let create = |partitions: &str, name: &str| {
        broker.run_cli(&[
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            partitions,
            "--",
            name,
        ])
    };
    create("0", "no-partitions").unwrap_or_else(|e| panic!("{e}"));
    create("2", "bad name/!").unwrap_or_else(|e| panic!("{e}"));
    create("2", "").unwrap_or_else(|e| panic!("{e}"));
    // A negative count is a usage error (exit 2) from its argument parser.
    match create("-1", "negative") {
        Err(Error::CommandFailed { status, output, .. }) => {
            assert_eq!(status.code(), Some(2), "output: {output}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert_eq!(
        topics(&broker),
        vec![
            (String::new(), 2),
            ("bad name/!".to_owned(), 2),
            ("no-partitions".to_owned(), 0),
        ]
    );
}

#[test]
fn drop_stops_the_broker() {
    let broker = start();
    let bootstrap = broker.bootstrap();
    let dir = broker.dir.path().to_owned();
    assert!(broker.log_path().starts_with(&dir));
    drop(broker);
    assert!(
        TcpStream::connect(&bootstrap).is_err(),
        "{bootstrap} still accepts connections after drop"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tansu>();
}

#[test]
fn brokers_are_independent() {
    let (a, b) = (start(), start());
    assert_ne!(a.port(), b.port());
    a.create_topic("only-in-a", 1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(topics(&a), vec![("only-in-a".to_owned(), 1)]);
    assert_eq!(topics(&b), vec![]);
}

#[test]
fn missing_binary_error_says_how_to_install() {
    let hint = "run `scripts/install-tansu.sh` (or `scripts/test.sh`, which installs it)";
    let nowhere = || Some(OsString::from("/nonexistent/strata-testkit"));
    for (strata_tansu, tools_dir, home, expect) in [
        (
            nowhere(),
            None,
            None,
            "/nonexistent/strata-testkit, from STRATA_TANSU",
        ),
        (
            None,
            nowhere(),
            None,
            "/nonexistent/strata-testkit/bin/tansu, from STRATA_TOOLS_DIR",
        ),
        (
            Some(OsString::new()),
            None,
            nowhere(),
            "/nonexistent/strata-testkit/.cache/strata/tools/bin/tansu, the default location",
        ),
        (
            None,
            None,
            None,
            "neither STRATA_TANSU, STRATA_TOOLS_DIR nor HOME is set",
        ),
    ] {
        let err = locate(strata_tansu, tools_dir, home).expect_err("binary should be missing");
        let msg = err.to_string();
        assert!(matches!(err, Error::BinaryNotFound { .. }), "{msg}");
        assert!(msg.contains(hint), "{msg}");
        assert!(msg.contains(expect), "{msg}");
    }
}

#[test]
fn broker_exiting_early_is_reported_with_its_log() {
    // A shell script stands in for a broker that exits at once.
    let fake = tempfile::tempdir().expect("tempdir");
    let script = fake.path().join("fake-tansu");
    std::fs::write(&script, "#!/bin/sh\necho \"fake broker got: $*\"\nexit 3\n")
        .expect("write script");
    let mut perms = std::fs::metadata(&script)
        .expect("stat script")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod script");
    match Tansu::start_with(script) {
        Err(e @ Error::BrokerExited { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("exit status: 3"), "{msg}");
            assert!(
                msg.contains("fake broker got: broker --listener-url tcp://127.0.0.1:"),
                "{msg}"
            );
            assert!(msg.contains("--storage-engine memory://tansu/"), "{msg}");
        }
        other => panic!("expected BrokerExited, got {other:?}"),
    }
}

#[test]
#[ignore = "slow: tansu's CLI retries a refused connection for about 24 s"]
fn cli_failure_includes_output() {
    // Connection refused: tansu retries for about 24 s, then exits 1 with its
    // message on stdout. Port 1 on loopback has nothing listening.
    let broker = start();
    match broker.run_cli(&["topic", "list", "--broker", "tcp://127.0.0.1:1"]) {
        Err(Error::CommandFailed {
            status,
            output,
            command,
        }) => {
            assert_eq!(status.code(), Some(1));
            assert!(
                command.ends_with("topic list --broker tcp://127.0.0.1:1"),
                "{command}"
            );
            assert!(output.contains("ConnectionRefused"), "output: {output}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
}
