//! The owner directory end to end: two instances of one app in this
//! process against Tansu agree on who owns each of 4 partitions (and agree
//! with what each instance's registry says it runs); when one shuts down,
//! its tombstone removes it at once and the other is seen owning
//! everything. A stale (expired) and an undecodable record in the topic
//! are ignored. On the embedded cluster, `create_app_topics` creates the
//! directory topic and a topology without tables publishes its input
//! partitions.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use strata_engine::kafka::client::KafkaConfig;
use strata_engine::kafka::output::OutputProducer;
use strata_engine::serde::{Utf8, json};
use strata_engine::{
    App, AppConfig, EmbeddedKafka, OutRecord, PartitionState, RunningApp, TableOptions, Topology,
};
use strata_testkit::Tansu;

const PARTITIONS: u32 = 4;

fn counts() -> Topology {
    let t = Topology::new();
    t.stream("events", Utf8, json::<u64>()).aggregate(
        "counts",
        TableOptions::default(),
        |_k, n: u64, old: Option<u64>| Some(old.unwrap_or(0) + n),
    );
    t
}

fn config(bootstrap: &str, app: &str, state: &Path, endpoint: &str) -> AppConfig {
    let mut c = AppConfig::new(app, bootstrap);
    c.state_dir = state.to_path_buf();
    c.kafka.session_timeout = Duration::from_secs(6);
    c.commit_interval = Duration::from_millis(200);
    c.advertised_endpoint = Some(endpoint.to_string());
    c.directory_interval = Duration::from_millis(250);
    c
}

fn produce(bootstrap: &str, records: Vec<OutRecord>) {
    let p = OutputProducer::new(&KafkaConfig::new(bootstrap), BTreeMap::new()).unwrap();
    p.produce(&records).unwrap();
}

/// Table partitions running on `app`, by its own registry.
fn running_here(app: &RunningApp) -> BTreeSet<u32> {
    app.registry()
        .partitions()
        .into_iter()
        .filter(|(_, _, s)| *s == PartitionState::Running)
        .map(|(_, p, _)| p.0)
        .collect()
}

/// Checks that `viewer`'s directory shows exactly `apps` (with their
/// endpoints) owning every partition, running, as their registries say.
fn agrees(viewer: &RunningApp, apps: &[(&RunningApp, &str)]) -> Result<(), String> {
    let s = viewer.directory().snapshot();
    if !s.caught_up {
        return Err("not caught up".into());
    }
    let want_members: BTreeSet<&str> = apps
        .iter()
        .map(|(a, _)| a.directory().member_id())
        .collect();
    let members: BTreeSet<&str> = s.members.iter().map(|m| m.member.as_str()).collect();
    if members != want_members {
        return Err(format!("members {members:?}, want {want_members:?}"));
    }
    // Steady state: no partition claimed twice.
    let claims: Vec<u32> = s
        .members
        .iter()
        .flat_map(|m| m.partitions.keys().map(|p| p.0))
        .collect();
    if claims.len() != PARTITIONS as usize {
        return Err(format!("claims {claims:?}"));
    }
    if s.owners.keys().map(|p| p.0).collect::<Vec<_>>() != (0..PARTITIONS).collect::<Vec<_>>() {
        return Err(format!("owners {:?}", s.owners));
    }
    for (app, endpoint) in apps {
        let id = app.directory().member_id();
        let owned: BTreeSet<u32> = s
            .owners
            .iter()
            .filter(|(_, o)| o.member == id)
            .map(|(p, _)| p.0)
            .collect();
        if owned.is_empty() || owned != running_here(app) {
            return Err(format!(
                "{id} owns {owned:?} in the directory but runs {:?}",
                running_here(app)
            ));
        }
        for (p, o) in s.owners.iter().filter(|(_, o)| o.member == id) {
            if o.endpoint != *endpoint || o.state != PartitionState::Running {
                return Err(format!("partition {p}: {o:?}"));
            }
        }
    }
    Ok(())
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() >= timeout => panic!("{what}: not within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn two_instances_agree_on_owners_and_the_survivor_takes_over() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let tansu = Tansu::start().unwrap();
    tansu.create_topic("events", PARTITIONS).unwrap();
    let bootstrap = tansu.bootstrap();
    produce(
        &bootstrap,
        (0..200)
            .map(|i| OutRecord {
                topic: "events".into(),
                key: Some(format!("k{i}").into_bytes()),
                value: Some(b"1".to_vec()),
                headers: vec![],
            })
            .collect(),
    );
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e1, e2) = ("http://127.0.0.1:7001", "http://127.0.0.1:7002");
    let a = App::new(config(&bootstrap, "dir", s1.path(), e1))
        .unwrap()
        .start(counts())
        .unwrap();
    assert_ne!(a.directory().member_id(), "");

    // A crashed member's last word (fresh claims, stale heartbeat) and a
    // record that is not an announcement: both must be ignored.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ghost = serde_json::json!({
        "member": "ghost", "endpoint": "http://127.0.0.1:7999", "epoch": 9, "updated_ms": now_ms - 3_600_000,
        "partitions": (0..PARTITIONS).map(|p| serde_json::json!({"partition": p, "state": "running", "since_ms": now_ms + 3_600_000})).collect::<Vec<_>>(),
    });
    produce(
        &bootstrap,
        vec![
            OutRecord {
                topic: "dir-directory".into(),
                key: Some(b"ghost".to_vec()),
                value: Some(serde_json::to_vec(&ghost).unwrap()),
                headers: vec![],
            },
            OutRecord {
                topic: "dir-directory".into(),
                key: Some(b"junk".to_vec()),
                value: Some(b"{not json".to_vec()),
                headers: vec![],
            },
        ],
    );

    let b = App::new(config(&bootstrap, "dir", s2.path(), e2))
        .unwrap()
        .start(counts())
        .unwrap();
    assert_ne!(a.directory().member_id(), b.directory().member_id());
    let took = wait_for(
        "both directories agree with both registries",
        Duration::from_secs(120),
        || {
            agrees(&a, &[(&a, e1), (&b, e2)])?;
            agrees(&b, &[(&a, e1), (&b, e2)])
        },
    );
    let split: Vec<usize> = [&a, &b].iter().map(|x| running_here(x).len()).collect();
    println!("two instances agreed after {took:?}; partitions split {split:?}");
    // Routing answers from one instance name the other's endpoint.
    let remote = (0..PARTITIONS)
        .map(strata_state::Partition)
        .find(|p| !running_here(&a).contains(&p.0))
        .unwrap();
    assert_eq!(a.directory().owner(remote).unwrap().endpoint, e2);

    // A graceful shutdown withdraws at once (a tombstone), well before the
    // 18 s TTL would expire it.
    let gone = a.directory().member_id().to_string();
    a.shutdown().unwrap();
    let withdrawn = wait_for(
        "the tombstone reaches the survivor",
        Duration::from_secs(5),
        || match b.directory().members().iter().any(|m| m.member == gone) {
            true => Err("still listed".into()),
            false => Ok(()),
        },
    );
    let took = wait_for(
        "the survivor is seen owning every partition",
        Duration::from_secs(90),
        || agrees(&b, &[(&b, e2)]),
    );
    println!("withdrawn after {withdrawn:?}; survivor owned all after {took:?} more");
    assert_eq!(running_here(&b).len(), PARTITIONS as usize);
    b.shutdown().unwrap();
}

#[test]
fn the_embedded_cluster_gets_a_directory_and_tableless_apps_publish_inputs() {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("words", 2).unwrap();
    let state = tempfile::tempdir().unwrap();
    let topology = || {
        let t = Topology::new();
        t.stream("words", Utf8, Utf8).to("copies", Utf8, Utf8);
        t
    };
    let mut cfg = config(
        &kafka.bootstrap_servers(),
        "plain",
        state.path(),
        "http://127.0.0.1:7101",
    );
    cfg.manage_topics = false;

    // create_app_topics creates the directory topic with the others.
    let mut other = cfg.clone();
    other.application_id = "plain2".into();
    kafka.create_app_topics(&other, &topology(), 2).unwrap();

    // Without it, startup names it.
    kafka.create_topic("plain-dlq", 2).unwrap();
    let err = App::new(cfg)
        .unwrap()
        .start(topology())
        .err()
        .expect("no directory topic");
    assert!(
        err.to_string()
            .contains("\"plain-directory\" does not exist"),
        "{err}"
    );

    let app = App::new(other).unwrap().start(topology()).unwrap();
    let member = app.directory().member_id().to_string();
    wait_for(
        "the app is seen owning its input partitions",
        Duration::from_secs(60),
        || {
            let s = app.directory().snapshot();
            let assigned: BTreeSet<u32> = app.registry().assigned().iter().map(|p| p.0).collect();
            let owned: BTreeSet<u32> = s
                .owners
                .iter()
                .filter(|(_, o)| o.member == member && o.state == PartitionState::Running)
                .map(|(p, _)| p.0)
                .collect();
            match s.caught_up && assigned == BTreeSet::from([0, 1]) && owned == assigned {
                true => Ok(()),
                false => Err(format!("assigned {assigned:?}, directory {:?}", s.owners)),
            }
        },
    );
    assert_eq!(app.directory().members().len(), 1);
    assert!(app.registry().partitions().is_empty(), "no tables");
    app.shutdown().unwrap();
}
