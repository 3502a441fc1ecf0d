//! The table partition's contract, run against both stores: versions,
//! commit time, isolation, reads at every point, history, scans, diffs,
//! rewinds, retention, crash-reopen and restore from a changelog.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use common::{Harness, config, open};
use strata_state::store::KvStore;
use strata_state::{
    At, ChangeRecord, ChangelogReader, ChangelogWriter, Error, Granularity, HistoryQuery, KeyRange,
    Lineage, MemoryChangelog, Offset, Order, Partition, Point, Retention, ScanRequest, ScanToken,
    TablePartition, Timestamp, Version, VersionFlags,
};

fn ts(ms: u64) -> Timestamp {
    Timestamp(ms)
}

fn put_commit<S: KvStore>(t: &mut TablePartition<S>, key: &str, value: &str, now: u64) -> Version {
    t.put(key.as_bytes(), value.as_bytes(), None);
    *t.commit(ts(now), &[]).unwrap().versions.end()
}

fn val<S: KvStore>(t: &TablePartition<S>, key: &str, at: At) -> Option<String> {
    t.reader()
        .get_at(key.as_bytes(), at)
        .unwrap()
        .map(|v| String::from_utf8(v.value).unwrap())
}

both_stores!(
    versions_are_dense_and_time_is_monotonic,
    staged_writes_are_invisible_to_readers,
    reads_at_versions_and_times,
    history_ranges_orders_and_paging,
    scans_ranges_pinning_and_tokens,
    diffs_between_versions,
    rewind_restores_deletes_and_can_be_undone,
    rewind_of_a_key_range,
    per_commit_granularity_collapses_keys,
    last_n_retention,
    duration_retention,
    reopen_is_the_last_checkpoint,
    restore_from_changelog_reproduces_versions,
    a_failed_restore_keeps_the_batches_before_it,
    corrupt_values_are_reported_with_their_key,
    bad_requests_get_clear_errors,
);

fn versions_are_dense_and_time_is_monotonic<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    assert_eq!(t.latest_version(), Version::ZERO);
    t.put(b"a", b"1", None);
    t.put(b"b", b"1", None);
    t.put(b"a", b"2", None);
    let c1 = t.commit(ts(1000), &[]).unwrap();
    assert_eq!(c1.versions, Version(1)..=Version(3), "{}", h.name());
    // The clock steps back: the commit time does not.
    t.delete(b"b", None);
    let c2 = t.commit(ts(400), &[]).unwrap();
    assert_eq!(c2.versions, Version(4)..=Version(4));
    assert_eq!(c2.time, ts(1000));
    // An empty commit creates no version.
    let c3 = t.commit(ts(2000), &[]).unwrap();
    assert!(c3.versions.is_empty());
    assert_eq!(t.latest_version(), Version(4));
    let r = t.reader();
    let rec = r.version_record(Version(4)).unwrap().unwrap();
    assert!(rec.deleted);
    assert_eq!(rec.key, b"b");
    assert_eq!(rec.time, ts(1000));
    assert_eq!(val(&t, "a", At::Latest).as_deref(), Some("2"));
    assert_eq!(val(&t, "b", At::Latest), None);
    // Per-mutation: the intermediate value is a version of its own.
    assert_eq!(val(&t, "a", At::Version(Version(1))).as_deref(), Some("1"));
    assert_eq!(val(&t, "b", At::Version(Version(3))).as_deref(), Some("1"));
}

fn staged_writes_are_invisible_to_readers<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    put_commit(&mut t, "k", "old", 10);
    t.put(b"k", b"new", None);
    t.put(b"fresh", b"x", None);
    // The owner reads its own writes; readers see committed versions only.
    assert_eq!(t.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(t.get(b"fresh").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(val(&t, "k", At::Latest).as_deref(), Some("old"));
    assert_eq!(val(&t, "fresh", At::Latest), None);
    let prepared = t.prepare(ts(20)).unwrap();
    assert_eq!(prepared.records().len(), 2);
    assert_eq!(prepared.records()[0].version, Version(2));
    // Prepared but not applied: still invisible.
    assert_eq!(val(&t, "k", At::Latest).as_deref(), Some("old"));
    assert_eq!(t.reader().latest_version(), Version(1));
    // A second prepare before apply is a protocol error.
    assert!(matches!(t.prepare(ts(30)), Err(Error::Protocol { .. })));
    t.apply(prepared, &[], &[]).unwrap();
    assert_eq!(val(&t, "k", At::Latest).as_deref(), Some("new"));
    // A discarded commit leaves nothing and its versions are reused.
    t.put(b"k", b"lost", None);
    let p = t.prepare(ts(40)).unwrap();
    t.discard(p);
    assert_eq!(put_commit(&mut t, "k", "kept", 50), Version(4));
    assert_eq!(val(&t, "k", At::Latest).as_deref(), Some("kept"));
}

fn reads_at_versions_and_times<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    let v1 = put_commit(&mut t, "k", "a", 100);
    let v2 = put_commit(&mut t, "k", "b", 200);
    t.delete(b"k", None);
    let v3 = *t.commit(ts(300), &[]).unwrap().versions.end();
    let v4 = put_commit(&mut t, "k", "d", 400);
    assert_eq!(val(&t, "k", At::Version(Version::ZERO)), None);
    assert_eq!(val(&t, "k", At::Version(v1)).as_deref(), Some("a"));
    assert_eq!(val(&t, "k", At::Version(v2)).as_deref(), Some("b"));
    assert_eq!(val(&t, "k", At::Version(v3)), None);
    assert_eq!(val(&t, "k", At::Version(v4)).as_deref(), Some("d"));
    assert_eq!(val(&t, "k", At::Time(ts(99))), None);
    assert_eq!(val(&t, "k", At::Time(ts(100))).as_deref(), Some("a"));
    assert_eq!(val(&t, "k", At::Time(ts(250))).as_deref(), Some("b"));
    assert_eq!(val(&t, "k", At::Time(ts(399))), None);
    assert_eq!(val(&t, "k", At::Time(ts(10_000))).as_deref(), Some("d"));
    // Metadata travels with the value.
    t.put(
        b"m",
        b"x",
        Some(Lineage {
            topic: "orders".into(),
            partition: Partition(3),
            offset: Offset(77),
        }),
    );
    t.commit(ts(500), &[]).unwrap();
    let got = t.reader().get(b"m").unwrap().unwrap();
    assert_eq!(got.version, Version(5));
    assert_eq!(got.time, ts(500));
    assert_eq!(got.lineage.unwrap().offset, Offset(77));
    // A version from the future is an error, not "absent".
    let err = t
        .reader()
        .get_at(b"k", At::Version(Version(6)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::FutureVersion {
                requested: Version(6),
                latest: Version(5),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("latest version is v5"), "{err}");
}

fn history_ranges_orders_and_paging<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    for i in 1..=10u64 {
        put_commit(&mut t, "k", &format!("v{i}"), i * 100);
        put_commit(&mut t, "other", &format!("o{i}"), i * 100 + 50);
    }
    t.delete(b"k", None);
    t.commit(ts(2000), &[]).unwrap();
    let r = t.reader();
    let all = r
        .history(
            b"k",
            &HistoryQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(all.entries.len(), 11);
    assert!(all.entries[0].value.is_none(), "newest first: the deletion");
    assert_eq!(all.entries[1].value.as_deref(), Some(&b"v10"[..]));
    assert!(all.entries.windows(2).all(|w| w[0].version > w[1].version));
    assert!(!all.truncated_by_retention);
    let asc = r
        .history(
            b"k",
            &HistoryQuery {
                order: Order::Ascending,
                limit: 3,
                ..Default::default()
            },
        )
        .unwrap();
    let vals: Vec<_> = asc
        .entries
        .iter()
        .map(|e| e.value.clone().unwrap())
        .collect();
    assert_eq!(vals, vec![b"v1".to_vec(), b"v2".to_vec(), b"v3".to_vec()]);
    let next = asc.next.expect("more to come");
    let page2 = r
        .history(
            b"k",
            &HistoryQuery {
                from: Some(Point::Version(next)),
                order: Order::Ascending,
                limit: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page2.entries[0].value.as_deref(), Some(&b"v4"[..]));
    // By time: versions committed in [300, 500].
    let by_time = r
        .history(
            b"k",
            &HistoryQuery {
                from: Some(Point::Time(ts(300))),
                to: Some(Point::Time(ts(500))),
                order: Order::Ascending,
                limit: 10,
            },
        )
        .unwrap();
    let vals: Vec<_> = by_time
        .entries
        .iter()
        .map(|e| e.value.clone().unwrap())
        .collect();
    assert_eq!(vals, vec![b"v3".to_vec(), b"v4".to_vec(), b"v5".to_vec()]);
    // A key that never existed has an empty history.
    assert!(
        r.history(b"nope", &HistoryQuery::default())
            .unwrap()
            .entries
            .is_empty()
    );
    // A key that is a prefix of another does not see its history.
    put_commit(&mut t, "k\u{0}x", "zz", 3000);
    assert_eq!(
        t.reader()
            .history(
                b"k",
                &HistoryQuery {
                    limit: 100,
                    ..Default::default()
                }
            )
            .unwrap()
            .entries
            .len(),
        11
    );
}

fn scans_ranges_pinning_and_tokens<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    for i in 0..50u32 {
        t.put(
            format!("key{i:03}").as_bytes(),
            format!("{i}").as_bytes(),
            None,
        );
    }
    t.put(b"zzz", b"z", None);
    let v1 = *t.commit(ts(100), &[]).unwrap().versions.end();
    let r = t.reader();
    // Page through a prefix at latest.
    let mut token = None;
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let page = r
            .scan(&ScanRequest {
                range: KeyRange::prefix(b"key".to_vec()),
                at: At::Latest,
                limit: 7,
                token: token.clone(),
            })
            .unwrap();
        assert_eq!(page.version, v1);
        keys.extend(
            page.items
                .iter()
                .map(|(k, _)| String::from_utf8(k.clone()).unwrap()),
        );
        pages += 1;
        // The owner commits between pages: the scan stays pinned to v1.
        t.put(format!("key{:03}", pages).as_bytes(), b"changed", None);
        t.put(b"key0000", b"new-key", None);
        t.commit(ts(100 + pages), &[]).unwrap();
        match page.next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    let expected: Vec<String> = (0..50).map(|i| format!("key{i:03}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 8);
    // At the first version, values are the original ones.
    let page = r
        .scan(&ScanRequest {
            range: KeyRange::between(b"key001".to_vec(), b"key003".to_vec()),
            at: At::Version(v1),
            limit: 10,
            token: None,
        })
        .unwrap();
    let got: Vec<_> = page
        .items
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"key001".to_vec(), b"1".to_vec()),
            (b"key002".to_vec(), b"2".to_vec())
        ]
    );
    // Deleted keys disappear from later scans but not earlier ones.
    t.delete(b"key010", None);
    let vd = *t.commit(ts(1000), &[]).unwrap().versions.end();
    let at = |at| {
        r.scan(&ScanRequest {
            range: KeyRange::prefix(b"key010".to_vec()),
            at,
            limit: 10,
            token: None,
        })
        .unwrap()
        .items
        .len()
    };
    assert_eq!(at(At::Latest), 0);
    assert_eq!(at(At::Version(Version(vd.0 - 1))), 1);
    // A tampered token or another partition's token is rejected.
    let page = r
        .scan(&ScanRequest {
            range: KeyRange::all(),
            at: At::Latest,
            limit: 2,
            token: None,
        })
        .unwrap();
    let mut bad = page.next.clone().unwrap();
    let n = bad.0.len();
    bad.0[n / 2] ^= 0x55;
    let err = r
        .scan(&ScanRequest {
            range: KeyRange::all(),
            at: At::Latest,
            limit: 2,
            token: Some(bad),
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidScanToken { .. }), "{err}");
    assert!(matches!(
        r.scan(&ScanRequest {
            range: KeyRange::all(),
            at: At::Latest,
            limit: 2,
            token: Some(ScanToken(vec![1, 2, 3]))
        }),
        Err(Error::InvalidScanToken { .. })
    ));
    let err = r
        .scan(&ScanRequest {
            range: KeyRange::prefix(b"zz".to_vec()),
            at: At::Latest,
            limit: 2,
            token: page.next.clone(),
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("key range"),
        "a token only resumes its own range: {err}"
    );
    let mut other = open(h.fresh(), config("t", 1));
    put_commit(&mut other, "a", "b", 1);
    let err = other
        .reader()
        .scan(&ScanRequest {
            range: KeyRange::all(),
            at: At::Latest,
            limit: 2,
            token: page.next,
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("another table, partition or key range"),
        "{err}"
    );
}

fn diffs_between_versions<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    t.put(b"a", b"1", None);
    t.put(b"b", b"1", None);
    t.put(b"c", b"1", None);
    let v1 = *t.commit(ts(10), &[]).unwrap().versions.end();
    t.put(b"a", b"2", None); // changed
    t.delete(b"b", None); // deleted
    t.put(b"d", b"1", None); // born
    t.put(b"c", b"9", None);
    t.put(b"c", b"1", None); // changed and changed back: no difference
    let v2 = *t.commit(ts(20), &[]).unwrap().versions.end();
    let d = t
        .reader()
        .diff(At::Version(v1), At::Version(v2), &KeyRange::all(), 100)
        .unwrap();
    let summary: Vec<_> = d
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                e.before.as_ref().map(|v| v.value.clone()),
                e.after.as_ref().map(|v| v.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (b"a".to_vec(), Some(b"1".to_vec()), Some(b"2".to_vec())),
            (b"b".to_vec(), Some(b"1".to_vec()), None),
            (b"d".to_vec(), None, Some(b"1".to_vec())),
        ]
    );
    // By time, and limited to a range.
    let d = t
        .reader()
        .diff(
            At::Time(ts(15)),
            At::Latest,
            &KeyRange::between(b"b".to_vec(), b"z".to_vec()),
            100,
        )
        .unwrap();
    assert_eq!(d.len(), 2);
    assert!(matches!(
        t.reader()
            .diff(At::Version(v2), At::Version(v1), &KeyRange::all(), 10),
        Err(Error::InvalidRequest { .. })
    ));
    // The key bound is enforced.
    assert!(matches!(
        t.reader()
            .diff(At::Version(Version::ZERO), At::Latest, &KeyRange::all(), 2),
        Err(Error::InvalidRequest { .. })
    ));
}

fn rewind_restores_deletes_and_can_be_undone<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    t.put(b"keep", b"same", None);
    t.put(b"changed", b"good", None);
    t.put(b"deleted", b"was-here", None);
    let target = *t.commit(ts(100), &[]).unwrap().versions.end();
    t.put(b"changed", b"bad", None);
    t.delete(b"deleted", None);
    t.put(b"born", b"late", None);
    let bad = *t.commit(ts(200), &[]).unwrap().versions.end();
    // The dry run changes nothing.
    let plan = t.plan_rewind(At::Time(ts(150)), &KeyRange::all()).unwrap();
    assert_eq!(plan.target, target);
    assert_eq!(plan.changes.len(), 3);
    assert_eq!(t.latest_version(), bad);
    assert_eq!(t.staged_len(), 0);
    t.rewind(At::Version(target), &KeyRange::all()).unwrap();
    let c = t.commit(ts(300), &[]).unwrap();
    assert_eq!(
        c.versions.end().0 - c.versions.start().0 + 1,
        3,
        "one new version per changed key"
    );
    assert_eq!(val(&t, "changed", At::Latest).as_deref(), Some("good"));
    assert_eq!(val(&t, "deleted", At::Latest).as_deref(), Some("was-here"));
    assert_eq!(val(&t, "born", At::Latest), None);
    assert_eq!(val(&t, "keep", At::Latest).as_deref(), Some("same"));
    let r = t.reader();
    assert!(r.get(b"changed").unwrap().unwrap().flags.is_rewind());
    assert!(!r.get(b"keep").unwrap().unwrap().flags.is_rewind());
    for v in c.versions.start().0..=c.versions.end().0 {
        assert!(
            r.version_record(Version(v))
                .unwrap()
                .unwrap()
                .flags
                .contains(VersionFlags::REWIND)
        );
    }
    // History shows the whole story, and the rewind can be undone.
    let hist = r.history(b"changed", &HistoryQuery::default()).unwrap();
    let vals: Vec<_> = hist
        .entries
        .iter()
        .map(|e| e.value.clone().unwrap())
        .collect();
    assert_eq!(
        vals,
        vec![b"good".to_vec(), b"bad".to_vec(), b"good".to_vec()]
    );
    t.rewind(At::Version(bad), &KeyRange::all()).unwrap();
    t.commit(ts(400), &[]).unwrap();
    assert_eq!(val(&t, "changed", At::Latest).as_deref(), Some("bad"));
    assert_eq!(val(&t, "born", At::Latest).as_deref(), Some("late"));
    assert_eq!(val(&t, "deleted", At::Latest), None);
    // Rewinding with staged mutations is refused.
    t.put(b"x", b"y", None);
    assert!(matches!(
        t.rewind(At::Version(target), &KeyRange::all()),
        Err(Error::Protocol { .. })
    ));
    // A stale plan is refused.
    t.discard_staged();
    let stale = t
        .plan_rewind(At::Version(target), &KeyRange::all())
        .unwrap();
    put_commit(&mut t, "x", "z", 500);
    assert!(matches!(t.stage_plan(&stale), Err(Error::Protocol { .. })));
}

fn rewind_of_a_key_range<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    for k in ["a1", "a2", "b1", "b2"] {
        t.put(k.as_bytes(), b"0", None);
    }
    let target = *t.commit(ts(1), &[]).unwrap().versions.end();
    for k in ["a1", "a2", "b1", "b2"] {
        t.put(k.as_bytes(), b"1", None);
    }
    t.commit(ts(2), &[]).unwrap();
    let plan = t
        .rewind(At::Version(target), &KeyRange::prefix(b"b".to_vec()))
        .unwrap();
    assert_eq!(plan.changes.len(), 2);
    t.commit(ts(3), &[]).unwrap();
    let now: Vec<_> = ["a1", "a2", "b1", "b2"]
        .iter()
        .map(|k| val(&t, k, At::Latest).unwrap())
        .collect();
    assert_eq!(now, vec!["1", "1", "0", "0"]);
}

fn per_commit_granularity_collapses_keys<H: Harness>(h: &mut H) {
    let mut t = open(
        h.fresh(),
        config("t", 0).granularity(Granularity::PerCommit),
    );
    for i in 0..10 {
        t.put(b"hot", format!("{i}").as_bytes(), None);
    }
    t.put(b"cold", b"c", None);
    t.delete(b"gone", None);
    let c = t.commit(ts(5), &[]).unwrap();
    assert_eq!(c.versions, Version(1)..=Version(3));
    assert_eq!(val(&t, "hot", At::Latest).as_deref(), Some("9"));
    let hist = t
        .reader()
        .history(b"hot", &HistoryQuery::default())
        .unwrap();
    assert_eq!(hist.entries.len(), 1);
}

fn last_n_retention<H: Harness>(h: &mut H) {
    let mut t = open(
        h.fresh(),
        config("t", 0).retention(Retention::last_versions(3).unwrap()),
    );
    let mut versions = Vec::new();
    for i in 1..=6u64 {
        versions.push(put_commit(&mut t, "k", &format!("{i}"), i * 10));
        put_commit(&mut t, "other", &format!("{i}"), i * 10 + 1);
    }
    let check = |t: &TablePartition<H::S>| {
        let r = t.reader();
        // The last 3 versions of k are readable; older ones are beyond retention.
        for (i, v) in versions.iter().enumerate() {
            let got = r.get_at(b"k", At::Version(*v));
            if i >= 3 {
                assert_eq!(
                    got.unwrap().unwrap().value,
                    format!("{}", i + 1).into_bytes()
                );
            } else {
                let err = got.unwrap_err();
                assert!(err.is_beyond_retention(), "v{} of k: {err}", v.0);
                assert!(err.to_string().contains("\"k\""), "names the key: {err}");
            }
        }
        // Before the key existed it was absent, truly.
        assert_eq!(r.get_at(b"k", At::Version(Version::ZERO)).unwrap(), None);
        let hist = r.history(b"k", &HistoryQuery::default()).unwrap();
        assert_eq!(hist.entries.len(), 3);
        assert!(hist.truncated_by_retention);
    };
    check(&t);
    // Pruning reclaims space without changing any answer.
    let mut report = t.prune(5).unwrap();
    while !report.done {
        report = t.prune(5).unwrap();
    }
    check(&t);
    let again = t.prune(100).unwrap();
    assert_eq!(again.removed, 0);
    // After a reopen too.
    let store = h.reopen(t.into_store().unwrap());
    let t = open(
        store,
        config("t", 0).retention(Retention::last_versions(3).unwrap()),
    );
    check(&t);
}

fn duration_retention<H: Harness>(h: &mut H) {
    let mut t = open(
        h.fresh(),
        config("t", 0)
            .retention(Retention::duration(std::time::Duration::from_millis(1000)).unwrap()),
    );
    let v1 = put_commit(&mut t, "k", "a", 1000);
    let v2 = put_commit(&mut t, "k", "b", 1500);
    t.delete(b"gone", None);
    put_commit(&mut t, "gone", "x", 1600);
    t.delete(b"gone", None);
    t.commit(ts(1700), &[]).unwrap();
    let v3 = put_commit(&mut t, "k", "c", 2200);
    put_commit(&mut t, "z", "late", 3000);
    // Horizon is 3000 - 1000 = 2000.
    let check = |t: &TablePartition<H::S>| {
        let r = t.reader();
        assert!(
            r.get_at(b"k", At::Version(v1))
                .unwrap_err()
                .is_beyond_retention()
        );
        assert!(
            r.get_at(b"k", At::Version(v2))
                .unwrap_err()
                .is_beyond_retention()
        );
        assert!(
            r.get_at(b"k", At::Time(ts(1999)))
                .unwrap_err()
                .is_beyond_retention()
        );
        // The value current at the horizon is readable.
        assert_eq!(
            r.get_at(b"k", At::Time(ts(2000))).unwrap().unwrap().value,
            b"b"
        );
        assert_eq!(
            r.get_at(b"k", At::Time(ts(2999))).unwrap().unwrap().value,
            b"c"
        );
        assert_eq!(
            r.get_at(b"k", At::Version(v3)).unwrap().unwrap().value,
            b"c"
        );
        assert_eq!(r.get_at(b"gone", At::Time(ts(2500))).unwrap(), None);
        assert_eq!(r.get(b"k").unwrap().unwrap().value, b"c");
    };
    check(&t);
    let mut report = t.prune(2).unwrap();
    let mut removed = report.removed;
    while !report.done {
        report = t.prune(2).unwrap();
        removed += report.removed;
    }
    assert!(removed >= 2, "superseded entries were removed: {removed}");
    check(&t);
    // Diffs and rewinds to before the horizon fail clearly.
    assert!(
        t.reader()
            .diff(At::Version(v1), At::Latest, &KeyRange::all(), 10)
            .unwrap_err()
            .is_beyond_retention()
    );
    assert!(
        t.plan_rewind(At::Time(ts(1200)), &KeyRange::all())
            .unwrap_err()
            .is_beyond_retention()
    );
    // ...while a rewind to the horizon works.
    t.rewind(At::Time(ts(2000)), &KeyRange::all()).unwrap();
    t.commit(ts(3100), &[]).unwrap();
    assert_eq!(t.reader().get(b"k").unwrap().unwrap().value, b"b");
    assert_eq!(t.reader().get(b"z").unwrap(), None);
}

fn reopen_is_the_last_checkpoint<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    put_commit(&mut t, "a", "1", 10);
    t.put(b"a", b"2", None);
    t.put(b"b", b"2", None);
    let inputs = vec![strata_state::InputOffset {
        topic: "in".into(),
        partition: Partition(0),
        next: Offset(42),
    }];
    t.commit(ts(20), &inputs).unwrap();
    // Staged and prepared-but-unapplied work dies with the process.
    t.put(b"a", b"staged", None);
    t.put(b"c", b"staged", None);
    let p = t.prepare(ts(30)).unwrap();
    drop(p);
    let store = h.reopen(t.into_store().unwrap());
    let t = open(store, config("t", 0));
    assert_eq!(t.latest_version(), Version(3));
    assert_eq!(t.checkpoint().inputs, inputs);
    assert_eq!(t.checkpoint().time, ts(20));
    assert_eq!(val(&t, "a", At::Latest).as_deref(), Some("2"));
    assert_eq!(val(&t, "c", At::Latest), None);
    assert_eq!(val(&t, "a", At::Version(Version(1))).as_deref(), Some("1"));
    // Opening the store as another table or partition is refused.
    let store = h.reopen(t.into_store().unwrap());
    let err = TablePartition::open(store, config("t", 7)).unwrap_err();
    assert!(
        err.to_string().contains("holds table t partition 0"),
        "{err}"
    );
}

fn restore_from_changelog_reproduces_versions<H: Harness>(h: &mut H) {
    let mut log = MemoryChangelog::new();
    let mut a = open(h.fresh(), config("t", 0));
    for i in 0..30u64 {
        a.put(
            format!("k{}", i % 7).as_bytes(),
            format!("{i}").as_bytes(),
            Some(Lineage {
                topic: "in".into(),
                partition: Partition(0),
                offset: Offset(i),
            }),
        );
        if i % 5 == 0 {
            a.delete(b"k3", None);
        }
        if i % 4 == 3 {
            a.commit_to(&mut log, ts(i * 10), &[]).unwrap();
        }
    }
    a.commit_to(&mut log, ts(1000), &[]).unwrap();
    a.rewind(At::Version(Version(10)), &KeyRange::all())
        .unwrap();
    a.commit_to(&mut log, ts(1100), &[]).unwrap();
    // A retried produce repeats records: the restore must skip them.
    let dup: Vec<ChangeRecord> = log
        .read(Offset(3), 4)
        .unwrap()
        .records
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    log.append(&dup).unwrap();
    let mut b = open(h.fresh(), config("t", 0));
    let mut reports = 0;
    let p = b.restore_from(&mut log, 8, &mut |_| reports += 1).unwrap();
    assert!(reports >= 4, "progress after every batch");
    assert_eq!(p.applied, a.latest_version().0);
    assert_eq!(p.read, log.len() as u64);
    assert_eq!(b.latest_version(), a.latest_version());
    assert_eq!(
        b.checkpoint().inputs[0].next,
        Offset(30),
        "input position from lineage"
    );
    let (ra, rb) = (a.reader(), b.reader());
    for v in 0..=a.latest_version().0 {
        for k in 0..7 {
            let key = format!("k{k}");
            assert_eq!(
                ra.get_at(key.as_bytes(), At::Version(Version(v))).unwrap(),
                rb.get_at(key.as_bytes(), At::Version(Version(v))).unwrap(),
                "{key} at v{v}"
            );
        }
        if v > 0 {
            let (x, y) = (
                ra.version_record(Version(v)).unwrap().unwrap(),
                rb.version_record(Version(v)).unwrap().unwrap(),
            );
            assert_eq!(
                (x.key, x.time, x.flags, x.deleted),
                (y.key, y.time, y.flags, y.deleted)
            );
            assert!(y.changelog_offset.is_some());
        }
    }
    // Restoring again from the checkpoint reads only the tail (nothing).
    let p = b.restore_from(&mut log, 8, &mut |_| {}).unwrap();
    assert_eq!(p.applied, 0);
    assert_eq!(p.read, 0);
    // A gap in versions is an error that says what happened.
    let mut gappy = MemoryChangelog::new();
    let recs: Vec<ChangeRecord> = log
        .read(Offset(0), 3)
        .unwrap()
        .records
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    gappy.append(&[recs[0].clone(), recs[2].clone()]).unwrap();
    let mut c = open(h.fresh(), config("t", 0));
    let err = c.restore_from(&mut gappy, 10, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("versions are missing"), "{err}");
    // A corrupt changelog record is an error, not a skipped record.
    let mut corrupt = MemoryChangelog::new();
    corrupt.append_raw(b"k".to_vec(), vec![1, 2, 3, 4, 5, 6]);
    let mut d = open(h.fresh(), config("t", 0));
    assert!(d.restore_from(&mut corrupt, 10, &mut |_| {}).is_err());
    assert_eq!(d.latest_version(), Version::ZERO);
}

fn corrupt_values_are_reported_with_their_key<H: Harness>(h: &mut H) {
    use strata_state::store::{Cf, KvBatch};
    let mut t = open(h.fresh(), config("orders", 4));
    put_commit(&mut t, "alice", "10", 1);
    put_commit(&mut t, "alice", "20", 2);
    // Flip bytes of alice's latest entry and of one history entry, as a
    // damaged disk would.
    let latest = t.store().get(Cf::Latest, b"alice").unwrap().unwrap();
    let mut broken = latest.clone();
    broken[10] ^= 0xff;
    let mut b = t.store().batch();
    b.put(Cf::Latest, b"alice", &broken);
    let hk = strata_state::layout::history_key(b"alice", Version(1));
    b.put(Cf::History, &hk, b"garbage");
    t.store().write(b).unwrap();
    let r = t.reader();
    for err in [
        r.get(b"alice").unwrap_err(),
        r.get_at(b"alice", At::Version(Version(1))).unwrap_err(),
    ] {
        assert!(err.is_corrupt(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("table orders partition 4") && msg.contains("\"alice\""),
            "{msg}"
        );
    }
    // Other keys still read fine.
    put_commit(&mut t, "bob", "1", 3);
    assert_eq!(val(&t, "bob", At::Latest).as_deref(), Some("1"));
}

fn bad_requests_get_clear_errors<H: Harness>(h: &mut H) {
    let mut t = open(h.fresh(), config("t", 0));
    put_commit(&mut t, "a", "1", 1);
    let r = t.reader();
    assert!(matches!(
        r.history(
            b"a",
            &HistoryQuery {
                limit: 0,
                ..Default::default()
            }
        ),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        r.scan(&ScanRequest {
            range: KeyRange::all(),
            at: At::Latest,
            limit: 0,
            token: None
        }),
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        r.get_at(b"a", At::Version(Version(99))),
        Err(Error::FutureVersion { .. })
    ));
    // Zero retention is rejected when configured.
    let err = Retention::duration(std::time::Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("table.retention"), "{err}");
    assert!(Retention::last_versions(0).is_err());
    assert!(strata_state::TableName::new("bad name/").is_err());
}

/// A changelog whose appends land but report a timeout.
struct LandsButTimesOut(MemoryChangelog);

impl ChangelogWriter for LandsButTimesOut {
    fn append(&mut self, records: &[ChangeRecord]) -> Result<Vec<Offset>, Error> {
        self.0.append(records)?;
        Err(Error::Codec("simulated timeout: outcome unknown".into()))
    }
}

both_stores!(an_unknown_append_outcome_forces_a_restore_first);

fn an_unknown_append_outcome_forces_a_restore_first<H: Harness>(h: &mut H) {
    let mut log = LandsButTimesOut(MemoryChangelog::new());
    let mut t = open(h.fresh(), config("t", 0));
    t.put(b"k", b"landed", None);
    assert!(t.commit_to(&mut log, ts(10), &[]).is_err());
    assert!(t.needs_restore());
    // Committing again would reuse version 1 with other contents: refused.
    t.put(b"k", b"other", None);
    let err = t.commit_to(&mut log.0, ts(20), &[]).unwrap_err();
    assert!(
        err.to_string().contains("restore from the changelog"),
        "{err}"
    );
    t.discard_staged();
    // The restore picks up what landed; then commits continue after it.
    t.restore_from(&mut log.0, 100, &mut |_| {}).unwrap();
    assert_eq!(val(&t, "k", At::Latest).as_deref(), Some("landed"));
    t.put(b"k", b"next", None);
    assert_eq!(
        t.commit_to(&mut log.0, ts(30), &[]).unwrap().versions,
        Version(2)..=Version(2)
    );
    let mut again = open(h.fresh(), config("t", 0));
    t.put(b"j", b"x", None);
    t.commit_to(&mut log.0, ts(40), &[]).unwrap();
    again.restore_from(&mut log.0, 100, &mut |_| {}).unwrap();
    assert_eq!(
        again.reader().get(b"j").unwrap().unwrap().version,
        Version(3)
    );
}

/// A restore writes each batch while it reads the next: when a later batch
/// fails, every batch before it has landed, is visible to readers, is in
/// the checkpoint and survives a reopen; nothing after it is applied.
fn a_failed_restore_keeps_the_batches_before_it<H: Harness>(h: &mut H) {
    let mut log = MemoryChangelog::new();
    let mut a = open(h.fresh(), config("t", 0));
    for i in 0..23u64 {
        a.put(
            format!("k{}", i % 5).as_bytes(),
            format!("{i}").as_bytes(),
            None,
        );
        a.commit_to(&mut log, ts(i), &[]).unwrap();
    }
    // Version 24 goes missing: 25 follows 23.
    let mut gappy = MemoryChangelog::new();
    let recs: Vec<ChangeRecord> = log
        .read(Offset(0), 100)
        .unwrap()
        .records
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    gappy.append(&recs).unwrap();
    let mut late = recs[22].clone();
    late.version = Version(25);
    gappy.append(&[late]).unwrap();
    let store = h.fresh();
    let mut b = open(store, config("t", 0));
    let err = b.restore_from(&mut gappy, 4, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("versions are missing"), "{err}");
    // The 23 good records came in batches of 4: the last batch (21..=23)
    // holds the gap too, so its good records are refused with it.
    assert_eq!(b.latest_version(), Version(20), "{}", h.name());
    assert_eq!(b.reader().latest_version(), Version(20));
    assert_eq!(val(&b, "k4", At::Latest).as_deref(), Some("19"));
    let store = b.into_store().unwrap();
    let c = open(h.reopen(store), config("t", 0));
    assert_eq!(c.latest_version(), Version(20));
    assert_eq!(c.checkpoint().changelog.map(|p| p.0), Some(Offset(19)));
    assert_eq!(val(&c, "k4", At::Latest).as_deref(), Some("19"));
}
