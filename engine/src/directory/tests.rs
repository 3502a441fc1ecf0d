use super::service::member_id;
use super::*;
use crate::config::AppConfig;

const TTL: Duration = Duration::from_secs(10);

fn ann(member: &str, updated_ms: u64, claims: &[(u32, ClaimState, u64)]) -> Announcement {
    Announcement {
        member: member.into(),
        endpoint: format!("http://{member}:7001"),
        epoch: 1,
        partitions: claims
            .iter()
            .map(|&(partition, state, since_ms)| Claim {
                partition,
                state,
                restored_records: (state == ClaimState::Restoring).then_some(42),
                restore_rate: None,
                since_ms,
            })
            .collect(),
        updated_ms,
        misrouted: Vec::new(),
    }
}

fn owner_of(v: &View, p: u32, now: u64) -> Option<String> {
    v.owners(Timestamp(now), TTL, Some(p))
        .remove(&Partition(p))
        .map(|o| o.member)
}

use ClaimState::{Restoring, Running};

#[test]
fn the_most_recent_claim_wins_whatever_the_heartbeats() {
    let mut v = View::default();
    // `a` acquired partition 0 at 1000 and keeps heartbeating; `b`
    // acquired it at 5000 (a missed its revocation).
    assert_eq!(
        v.apply(
            "a",
            Some(ann("a", 9_000, &[(0, Running, 1_000), (1, Running, 1_000)]))
        ),
        Applied::Joined
    );
    v.apply("b", Some(ann("b", 5_000, &[(0, Restoring, 5_000)])));
    assert_eq!(owner_of(&v, 0, 9_000).as_deref(), Some("b"));
    assert_eq!(owner_of(&v, 1, 9_000).as_deref(), Some("a"));
    let o = v.owners(Timestamp(9_000), TTL, None);
    assert_eq!(
        o[&Partition(0)].state,
        PartitionState::Restoring {
            records: 42,
            rate: 0.0
        }
    );
    assert_eq!(o[&Partition(0)].endpoint, "http://b:7001");
    assert_eq!(o.len(), 2);
    // Same acquisition time: the later announcement, then the greater id.
    v.apply("c", Some(ann("c", 6_000, &[(2, Running, 3_000)])));
    v.apply("d", Some(ann("d", 7_000, &[(2, Running, 3_000)])));
    assert_eq!(owner_of(&v, 2, 9_000).as_deref(), Some("d"));
    v.apply("e", Some(ann("e", 7_000, &[(2, Running, 3_000)])));
    assert_eq!(owner_of(&v, 2, 9_000).as_deref(), Some("e"));
    assert_eq!(owner_of(&v, 3, 9_000), None);
}

#[test]
fn expired_members_are_ignored_and_then_forgotten() {
    let mut v = View::default();
    v.apply("old", Some(ann("old", 1_000, &[(0, Running, 1_000)])));
    v.apply("new", Some(ann("new", 8_000, &[(0, Running, 500)])));
    // Before old expires, its newer claim wins.
    assert_eq!(owner_of(&v, 0, 11_000).as_deref(), Some("old"));
    // After its TTL, the older claim of a live member takes over.
    assert_eq!(owner_of(&v, 0, 11_001).as_deref(), Some("new"));
    assert_eq!(v.members(Timestamp(11_001), TTL).len(), 1);
    // A heartbeat revives it.
    v.apply("old", Some(ann("old", 11_500, &[(0, Running, 1_000)])));
    assert_eq!(owner_of(&v, 0, 12_000).as_deref(), Some("old"));
    // Nobody live: no owner.
    assert_eq!(owner_of(&v, 0, 30_000), None);
    // A clock ahead of ours is not expired.
    v.apply("ahead", Some(ann("ahead", 40_000, &[(1, Running, 40_000)])));
    assert_eq!(owner_of(&v, 1, 30_000).as_deref(), Some("ahead"));
    // Pruning forgets only members expired for two TTLs.
    assert_eq!(v.prune(Timestamp(28_001), TTL), 1);
    assert_eq!(v.members.keys().collect::<Vec<_>>(), ["ahead", "old"]);
}

#[test]
fn tombstones_remove_members_and_later_records_replace_earlier() {
    let mut v = View::default();
    v.apply(
        "a",
        Some(ann("a", 1_000, &[(0, Running, 1_000), (1, Running, 1_000)])),
    );
    v.apply("b", Some(ann("b", 1_000, &[(0, Running, 500)])));
    assert_eq!(owner_of(&v, 0, 2_000).as_deref(), Some("a"));
    // a releases partition 0: its new announcement replaces the old.
    assert_eq!(
        v.apply("a", Some(ann("a", 1_500, &[(1, Running, 1_000)]))),
        Applied::Updated
    );
    assert_eq!(owner_of(&v, 0, 2_000).as_deref(), Some("b"));
    // a leaves.
    assert_eq!(v.apply("a", None), Applied::Left);
    assert_eq!(owner_of(&v, 1, 2_000), None);
    assert_eq!(v.apply("a", None), Applied::Ignored);
    // The key is the identity, whatever the value says.
    v.apply("c", Some(ann("impostor", 1_000, &[(1, Running, 1_000)])));
    assert_eq!(owner_of(&v, 1, 2_000).as_deref(), Some("c"));
}

#[test]
fn the_wire_format_is_stable_json() {
    let a = ann("m1", 1_234, &[(0, Restoring, 1_000), (3, Running, 1_100)]);
    let json = serde_json::to_value(&a).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "member": "m1", "endpoint": "http://m1:7001", "epoch": 1, "updated_ms": 1234,
            "partitions": [
                {"partition": 0, "state": "restoring", "restored_records": 42, "since_ms": 1000},
                {"partition": 3, "state": "running", "since_ms": 1100},
            ],
        })
    );
    // Unknown fields are ignored and optional ones default (newer or
    // older publishers).
    let parsed: Announcement = serde_json::from_str(
        r#"{"member":"x","endpoint":"http://x:1","epoch":2,"updated_ms":5,"future":true,
            "partitions":[{"partition":1,"state":"running"}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.partitions[0].since_ms, 0);
    assert!(parsed.misrouted.is_empty());
    assert!(serde_json::from_str::<Announcement>(r#"{"member":"x"}"#).is_err());
}

#[test]
fn misrouted_topics_come_from_live_members_only() {
    let d = Directory::new("me".into(), TTL);
    let now = Timestamp::now().0;
    let mut a = ann("a", now, &[(0, ClaimState::Running, now)]);
    a.misrouted = vec!["orders".into()];
    assert_eq!(
        serde_json::to_value(&a).unwrap()["misrouted"],
        serde_json::json!(["orders"])
    );
    d.apply("a", Some(a));
    assert!(d.misrouted("orders"));
    assert!(!d.misrouted("payments"));
    // Expired members say nothing.
    let mut old = ann("b", now - 2 * TTL.as_millis() as u64, &[]);
    old.misrouted = vec!["payments".into()];
    d.apply("b", Some(old));
    assert!(!d.misrouted("payments"));
    // Withdrawn: forgotten.
    d.apply("a", None);
    assert!(!d.misrouted("orders"));
}

#[test]
fn snapshots_resolve_one_view_at_a_given_time() {
    let d = Directory::new("me".into(), TTL);
    assert!(!d.is_caught_up());
    d.apply("me", Some(ann("me", 1_000, &[(0, Running, 1_000)])));
    d.apply("you", Some(ann("you", 1_000, &[(1, Running, 1_000)])));
    assert!(d.set_caught_up());
    assert!(!d.set_caught_up());
    let s = d.snapshot_at(Timestamp(2_000));
    assert!(s.caught_up);
    assert_eq!(s.members.len(), 2);
    assert_eq!(s.owners[&Partition(0)].member, d.member_id());
    assert_eq!(
        d.owner_at(Partition(1), Timestamp(2_000))
            .map(|o| o.member)
            .as_deref(),
        Some("you")
    );
    assert_eq!(d.owner_at(Partition(1), Timestamp(20_000)), None);
}

#[test]
fn member_ids_are_unique_per_start_unless_static() {
    let mut c = AppConfig::new("app", "127.0.0.1:9092");
    let (a, b) = (member_id(&c), member_id(&c));
    assert_ne!(a, b);
    assert!(a.contains(&std::process::id().to_string()));
    c.instance_id = Some("static-1".into());
    assert_eq!(member_id(&c), "static-1");
}
