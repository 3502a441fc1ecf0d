//! Topologies run by the in-process test driver: aggregation into versioned
//! tables, outputs with trace headers, poison records, joins, change
//! streams, and a crash-restart that keeps every committed effect.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_engine::serde::{Utf8, json};
use strata_engine::{ERROR_HEADER, OnError, TableOptions, TestDriver, Topology};
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};
use strata_state::{At, HistoryQuery, Partition, Timestamp, VersionFlags};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    customer: String,
    cents: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    count: u64,
    cents: i64,
}

fn totals_topology() -> Topology {
    let t = Topology::new();
    let orders = t.stream("orders", Utf8, json::<Order>());
    let totals = orders.aggregate(
        "totals",
        TableOptions::default(),
        |_k, o: Order, old: Option<Totals>| {
            let mut t = old.unwrap_or_default();
            t.count += 1;
            t.cents += o.cents;
            Some(t)
        },
    );
    totals
        .changes()
        .filter(|_, t| t.as_ref().is_some_and(|t| t.cents > 1000))
        .to("big-spenders", Utf8, json::<Option<Totals>>());
    t
}

fn decode(bytes: &[u8]) -> Totals {
    ValueCodec::<Totals>::decode(&Bincode, bytes).unwrap()
}

fn order(c: &str, cents: i64) -> Vec<u8> {
    serde_json::to_vec(&Order {
        customer: c.into(),
        cents,
    })
    .unwrap()
}

#[test]
fn per_key_sums_match_an_oracle_and_keep_versions() {
    let mut d = TestDriver::new(totals_topology(), 4, Timestamp(1_000)).unwrap();
    let mut oracle: BTreeMap<String, Totals> = BTreeMap::new();
    for i in 0..2_000i64 {
        let c = format!("c{}", (i * 7919) % 37);
        let cents = (i % 50) + 1;
        d.pipe("orders", c.as_bytes(), &order(&c, cents)).unwrap();
        let e = oracle.entry(c).or_default();
        e.count += 1;
        e.cents += cents;
        if i % 100 == 99 {
            d.advance_time(10);
            d.commit().unwrap();
        }
    }
    d.commit().unwrap();
    for (c, want) in &oracle {
        let r = d.table_for_key("totals", c.as_bytes()).unwrap();
        let got = r
            .get(&c.clone().to_key_bytes())
            .unwrap()
            .expect("every customer has a total");
        assert_eq!(decode(&got.value), *want, "{c}");
        // Every input record is a version of its key's history.
        let h = r
            .history(
                &c.clone().to_key_bytes(),
                &HistoryQuery {
                    limit: 10_000,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(h.entries.len() as u64, want.count);
        let lineage = got.lineage.expect("lineage");
        assert_eq!(lineage.topic, "orders");
        assert_eq!(lineage.partition, d.partition_of(c.as_bytes()));
    }
    // Versions are dense per partition and mirrored in the changelog.
    let mut versions = 0;
    for p in 0..4 {
        let r = d.table("totals", Partition(p)).unwrap();
        assert_eq!(
            r.latest_version().0 as usize,
            d.changelog_len("totals", Partition(p))
        );
        versions += r.latest_version().0;
    }
    assert_eq!(versions, 2_000);
    // Outputs carry their trace.
    let big = d.output("big-spenders");
    assert!(!big.is_empty());
    let trace = &big[0]
        .headers
        .iter()
        .find(|(k, _)| k == "strata-trace")
        .unwrap()
        .1;
    assert_eq!(
        std::str::from_utf8(trace).unwrap(),
        "aggregate-1,filter-2,to-3"
    );
}

#[test]
fn as_of_reads_through_the_driver_clock() {
    let mut d = TestDriver::new(totals_topology(), 2, Timestamp(1_000)).unwrap();
    d.pipe("orders", b"ann", &order("ann", 5)).unwrap();
    d.commit().unwrap();
    d.advance_time(1_000);
    d.pipe("orders", b"ann", &order("ann", 7)).unwrap();
    d.commit().unwrap();
    let r = d.table_for_key("totals", b"ann").unwrap();
    let k = "ann".to_string().to_key_bytes();
    assert_eq!(
        decode(
            &r.get_at(&k, At::Time(Timestamp(1_500)))
                .unwrap()
                .unwrap()
                .value
        )
        .cents,
        5
    );
    assert_eq!(decode(&r.get(&k).unwrap().unwrap().value).cents, 12);
}

#[test]
fn poison_records_are_dead_lettered_and_the_rest_processed() {
    let mut d = TestDriver::new(totals_topology(), 2, Timestamp(0)).unwrap();
    d.pipe("orders", b"ann", &order("ann", 5)).unwrap();
    d.pipe("orders", b"ann", b"{not json").unwrap();
    d.pipe("orders", b"bob", br#"{"customer":"bob"}"#).unwrap();
    d.pipe("orders", b"ann", &order("ann", 6)).unwrap();
    d.commit().unwrap();
    let dlq = d.output("test-driver-dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].value.as_deref(), Some(&b"{not json"[..]));
    let err = &dlq[0]
        .headers
        .iter()
        .find(|(k, _)| k == ERROR_HEADER)
        .unwrap()
        .1;
    assert!(
        std::str::from_utf8(err).unwrap().contains("json decode"),
        "{}",
        String::from_utf8_lossy(err)
    );
    let src = &dlq[1]
        .headers
        .iter()
        .find(|(k, _)| k == "strata-source")
        .unwrap()
        .1;
    assert!(std::str::from_utf8(src).unwrap().starts_with("orders/"));
    let r = d.table_for_key("totals", b"ann").unwrap();
    assert_eq!(
        decode(
            &r.get(&"ann".to_string().to_key_bytes())
                .unwrap()
                .unwrap()
                .value
        ),
        Totals {
            count: 2,
            cents: 11
        }
    );
}

#[test]
fn stop_policy_stops_and_skip_policy_skips() {
    let t = Topology::new();
    t.stream("in", Utf8, json::<i64>())
        .on_error(OnError::Stop)
        .to("out", Utf8, json::<i64>());
    let mut d = TestDriver::new(t, 1, Timestamp(0)).unwrap();
    d.pipe("in", b"k", b"1").unwrap();
    let err = d.pipe("in", b"k", b"x").unwrap_err();
    assert!(err.to_string().contains("in/0@1"), "{err}");

    let t = Topology::new();
    t.stream("in", Utf8, json::<i64>())
        .on_error(OnError::Skip)
        .to("out", Utf8, json::<i64>());
    let mut d = TestDriver::new(t, 1, Timestamp(0)).unwrap();
    d.pipe("in", b"k", b"x").unwrap();
    d.pipe("in", b"k", b"2").unwrap();
    d.commit().unwrap();
    assert_eq!(d.output("out").len(), 1);
    assert!(d.output("test-driver-dlq").is_empty());
}

#[test]
fn joins_read_the_current_table_value() {
    let t = Topology::new();
    let profiles = t.stream("profiles", Utf8, Utf8).aggregate(
        "names",
        TableOptions::default(),
        |_k, name: String, _old: Option<String>| Some(name),
    );
    t.stream("profiles", Utf8, Utf8)
        .filter(|_, _| false)
        .to("unused", Utf8, Utf8);
    t.stream("clicks", Utf8, Utf8)
        .join_table(&profiles, |_k, page: String, name: Option<String>| {
            Some(format!(
                "{} viewed {page}",
                name.unwrap_or_else(|| "someone".into())
            ))
        })
        .to("enriched", Utf8, Utf8);
    let mut d = TestDriver::new(t, 3, Timestamp(0)).unwrap();
    d.pipe("clicks", b"u1", b"/home").unwrap();
    d.pipe("profiles", b"u1", b"Ada").unwrap();
    d.pipe("clicks", b"u1", b"/docs").unwrap();
    d.commit().unwrap();
    let out: Vec<String> = d
        .output("enriched")
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(out, vec!["someone viewed /home", "Ada viewed /docs"]);
}

#[test]
fn restart_loses_no_committed_effect_and_replays_the_rest() {
    let mut d = TestDriver::new(totals_topology(), 2, Timestamp(0)).unwrap();
    for i in 0..10 {
        d.pipe("orders", b"ann", &order("ann", i)).unwrap();
    }
    d.commit().unwrap();
    for i in 10..15 {
        d.pipe("orders", b"ann", &order("ann", i)).unwrap();
    }
    // Crash before committing the last five: they are reprocessed.
    d.restart().unwrap();
    d.commit().unwrap();
    let r = d.table_for_key("totals", b"ann").unwrap();
    let got = r.get(&"ann".to_string().to_key_bytes()).unwrap().unwrap();
    assert_eq!(
        decode(&got.value),
        Totals {
            count: 15,
            cents: (0..15).sum()
        }
    );
    assert_eq!(
        got.version.0, 15,
        "no duplicate versions: uncommitted work was discarded, then redone"
    );
    assert!(!got.flags.contains(VersionFlags::REPLAY));
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Purchase {
    country: String,
    cents: i64,
}

#[test]
fn repartition_co_locates_a_new_key_with_its_table() {
    let t = Topology::new();
    t.stream("purchases", Utf8, json::<Purchase>())
        .map(|_user, p: Purchase| (p.country.clone(), p))
        .repartition("by-country", Utf8, json::<Purchase>())
        .aggregate(
            "country_totals",
            TableOptions::default(),
            |_c, p: Purchase, old: Option<i64>| Some(old.unwrap_or(0) + p.cents),
        );
    let mut d = TestDriver::new(t, 4, Timestamp(0)).unwrap();
    let countries = ["fr", "de", "jp", "br", "ca", "in"];
    let mut oracle: BTreeMap<&str, i64> = BTreeMap::new();
    for i in 0..600i64 {
        let user = format!("user-{i}");
        let country = countries[(i as usize * 5) % countries.len()];
        let p = Purchase {
            country: country.into(),
            cents: i,
        };
        d.pipe(
            "purchases",
            user.as_bytes(),
            &serde_json::to_vec(&p).unwrap(),
        )
        .unwrap();
        *oracle.entry(country).or_default() += i;
    }
    d.commit().unwrap();
    // Each country's total is in the partition its key hashes to, complete.
    for (c, want) in oracle {
        let r = d.table_for_key("country_totals", c.as_bytes()).unwrap();
        let got = r
            .get(&c.to_string().to_key_bytes())
            .unwrap()
            .expect("a total per country");
        assert_eq!(
            ValueCodec::<i64>::decode(&Bincode, &got.value).unwrap(),
            want,
            "{c}"
        );
        assert_eq!(got.lineage.unwrap().topic, "__repartition-by-country");
    }
    assert_eq!(d.output("__repartition-by-country").len(), 600);
}

#[test]
fn timers_fire_on_the_driver_clock_and_errors_do_not_stop_them() {
    let t = Topology::new();
    t.stream("in", Utf8, Utf8).to("out", Utf8, Utf8);
    let tick: std::sync::Arc<str> = std::sync::Arc::from("ticks");
    t.timer(
        "tick",
        strata_engine::topology::Schedule::Every(std::time::Duration::from_millis(1_000)),
        move |ctx, now| {
            let p = ctx.record().partition;
            ctx.send(
                &tick,
                Some(format!("p{}", p.0).into_bytes()),
                Some(now.0.to_string().into_bytes()),
            );
            Ok(())
        },
    );
    t.timer(
        "broken",
        strata_engine::topology::Schedule::Every(std::time::Duration::from_millis(500)),
        |_ctx, _now| Err("always fails".into()),
    );
    let mut d = TestDriver::new(t, 2, Timestamp(10_000)).unwrap();
    d.advance_time(999);
    d.commit().unwrap();
    assert!(d.output("ticks").is_empty(), "not due yet");
    for _ in 0..3 {
        d.advance_time(1_000);
    }
    d.commit().unwrap();
    let ticks: Vec<String> = d
        .output("ticks")
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        ticks.len(),
        3 * 2,
        "three firings in each of two tasks: {ticks:?}"
    );
    assert!(
        ticks.contains(&"11999".to_string()) && ticks.contains(&"13999".to_string()),
        "{ticks:?}"
    );
    let trace = &d.output("ticks")[0]
        .headers
        .iter()
        .find(|(k, _)| k == "strata-trace")
        .unwrap()
        .1;
    assert_eq!(trace, b"tick");
    assert!(
        strata_engine::topology::Schedule::cron("not cron")
            .unwrap_err()
            .to_string()
            .contains("timer.schedule")
    );
    let cron = strata_engine::topology::Schedule::cron("0 */5 * * * *").unwrap();
    assert_eq!(cron.next_after(Timestamp(0)), Some(Timestamp(300_000)));
}

#[test]
fn as_of_joins_read_the_table_at_the_record_time() {
    let t = Topology::new();
    let prices = t.stream("prices", Utf8, json::<i64>()).aggregate(
        "prices",
        TableOptions::default(),
        |_k, p: i64, _old: Option<i64>| Some(p),
    );
    t.stream("prices", Utf8, json::<i64>())
        .filter(|_, _| false)
        .to("unused", Utf8, json::<i64>());
    t.stream("trades", Utf8, json::<i64>())
        .join_table_as_of(&prices, |_k, qty: i64, price: Option<i64>| {
            Some(qty * price.unwrap_or(-1))
        })
        .to("values", Utf8, json::<i64>());
    let mut d = TestDriver::new(t, 1, Timestamp(1_000)).unwrap();
    d.pipe("prices", b"ACME", b"10").unwrap();
    d.commit().unwrap();
    d.advance_time(1_000);
    d.pipe("prices", b"ACME", b"20").unwrap();
    d.commit().unwrap();
    d.pipe_at("trades", b"ACME", b"3", Timestamp(1_500))
        .unwrap();
    d.pipe_at("trades", b"ACME", b"3", Timestamp(2_500))
        .unwrap();
    d.pipe_at("trades", b"ACME", b"3", Timestamp(500)).unwrap();
    d.commit().unwrap();
    let vals: Vec<String> = d
        .output("values")
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(vals, vec!["30", "60", "-3"]);
}

#[test]
fn a_rewind_reaches_downstream_as_flagged_changes() {
    let t = Topology::new();
    let totals = t.stream("orders", Utf8, json::<Order>()).aggregate(
        "totals",
        TableOptions::default(),
        |_k, o: Order, old: Option<i64>| Some(old.unwrap_or(0) + o.cents),
    );
    totals
        .changes()
        .to("total-changes", Utf8, json::<Option<i64>>());
    let mut d = TestDriver::new(t, 1, Timestamp(1_000)).unwrap();
    d.pipe("orders", b"ann", &order("ann", 5)).unwrap();
    d.commit().unwrap();
    let good = d.table("totals", Partition(0)).unwrap().latest_version();
    d.advance_time(1_000);
    d.pipe("orders", b"ann", &order("ann", 1_000_000)).unwrap();
    d.pipe("orders", b"bob", &order("bob", 7)).unwrap();
    d.commit().unwrap();
    let before = d.output("total-changes").len();
    let plan = d
        .rewind(
            "totals",
            Partition(0),
            At::Version(good),
            &strata_state::KeyRange::all(),
        )
        .unwrap();
    assert_eq!(plan.changes.len(), 2);
    let changes = &d.output("total-changes")[before..];
    let got: Vec<(String, String, bool)> = changes
        .iter()
        .map(|r| {
            let flagged = r
                .headers
                .iter()
                .any(|(k, v)| k == "strata-rewind" && v == b"1");
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                String::from_utf8(r.value.clone().unwrap()).unwrap(),
                flagged,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann".into(), "5".into(), true),
            ("bob".into(), "null".into(), true)
        ]
    );
    let r = d.table("totals", Partition(0)).unwrap();
    let ann = r.get(&"ann".to_string().to_key_bytes()).unwrap().unwrap();
    assert!(ann.flags.is_rewind());
    assert_eq!(ValueCodec::<i64>::decode(&Bincode, &ann.value).unwrap(), 5);
    assert!(r.get(&"bob".to_string().to_key_bytes()).unwrap().is_none());
}

/// The driver places keys as the topic's declared partitioner does, and
/// refuses to guess for an unknown one.
#[test]
fn pipe_places_keys_by_the_topics_partitioner() {
    use strata_engine::partitioner::Partitioner;
    let mut d = TestDriver::new(totals_topology(), 4, Timestamp(1_000)).unwrap();
    d.set_partitioner("orders", Partitioner::Crc32);
    let keys: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    let mut differs = 0;
    for k in &keys {
        let (p, _) = d.pipe("orders", k.as_bytes(), &order(k, 5)).unwrap();
        assert_eq!(Some(p), Partitioner::Crc32.partition(k.as_bytes(), 4));
        assert_eq!(d.partition_in("orders", k.as_bytes()), Some(p));
        differs += usize::from(p != d.partition_of(k.as_bytes()));
    }
    // CRC32 and murmur2 disagree on most keys: the test would see murmur2.
    assert!(differs > 20, "{differs}");
    d.commit().unwrap();
    for k in &keys {
        let r = d.table_for_key("totals", k.as_bytes()).unwrap();
        let v = r
            .get(&k.to_key_bytes())
            .unwrap()
            .expect("in its CRC32 partition");
        assert_eq!(decode(&v.value).cents, 5);
    }

    d.set_partitioner("orders", Partitioner::Unknown);
    let e = d.pipe("orders", b"c1", &order("c1", 1)).unwrap_err();
    assert!(e.to_string().contains("pipe_to"), "{e}");
    assert!(d.table_for_key("totals", b"c1").is_err());
    // An explicit partition still works.
    d.pipe_to(
        "orders",
        Partition(3),
        Some(b"c1".to_vec()),
        Some(order("c1", 1)),
    )
    .unwrap();
}
