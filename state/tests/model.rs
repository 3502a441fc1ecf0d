//! Model-based property test: random puts, deletes, commits (with the clock
//! stepping back), rewinds, retention changes, pruning and
//! reopen-after-crash, checked after every step against a plain in-memory
//! model of versioned state, for every read form, on both stores.

// Tests: a failed step panics with its message (workspace lints, clippy.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Harness, config};
use proptest::prelude::*;
use strata_state::{
    At, Error, HistoryQuery, KeyRange, Retention, ScanRequest, TablePartition, Timestamp, Version,
};

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Commit(i16),
    Rewind { target: u16, prefix: Option<u8> },
    SetRetention(Ret),
    Prune(u8),
    Crash,
    Get(u8, Pt),
    History(u8),
    Scan(Pt, u8),
    Diff(Pt),
}

#[derive(Clone, Copy, Debug)]
enum Ret {
    Unlimited,
    Last(u32),
    Millis(u64),
}

#[derive(Clone, Copy, Debug)]
enum Pt {
    Latest,
    Version(u16),
    Time(u16),
}

const KEYS: [&[u8]; 6] = [b"a", b"a\x00", b"ab", b"b", b"c", b"\xff"];

fn op() -> impl Strategy<Value = Op> {
    let pt = prop_oneof![
        Just(Pt::Latest),
        any::<u16>().prop_map(Pt::Version),
        any::<u16>().prop_map(Pt::Time)
    ];
    let ret = prop_oneof![
        Just(Ret::Unlimited),
        (1u32..4).prop_map(Ret::Last),
        (30u64..400).prop_map(Ret::Millis)
    ];
    prop_oneof![
        8 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0u8..6).prop_map(Op::Delete),
        5 => (-40i16..120).prop_map(Op::Commit),
        1 => (any::<u16>(), proptest::option::of(0u8..3)).prop_map(|(target, prefix)| Op::Rewind { target, prefix }),
        1 => ret.prop_map(Op::SetRetention),
        2 => (1u8..10).prop_map(Op::Prune),
        1 => Just(Op::Crash),
        6 => (0u8..6, pt.clone()).prop_map(|(k, p)| Op::Get(k, p)),
        2 => (0u8..6).prop_map(Op::History),
        2 => (pt.clone(), 1u8..4).prop_map(|(p, l)| Op::Scan(p, l)),
        1 => pt.prop_map(Op::Diff),
    ]
}

/// The model: every committed version, in order.
#[derive(Default)]
struct Model {
    versions: Vec<(Vec<u8>, Option<Vec<u8>>, u64)>,
    staged: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    last_time: u64,
    retention: Option<Ret>,
    /// Pruning removed the states before this version.
    floor: u64,
    /// Per key: pruning removed this version of the key and all older.
    expired: BTreeMap<Vec<u8>, u64>,
}

#[derive(Debug, PartialEq)]
enum Read<T> {
    Ok(T),
    Beyond,
}

impl Model {
    fn latest(&self) -> u64 {
        self.versions.len() as u64
    }
    fn time_of(&self, v: u64) -> u64 {
        if v == 0 {
            0
        } else {
            self.versions[v as usize - 1].2
        }
    }
    fn horizon(&self) -> Option<u64> {
        match self.retention {
            Some(Ret::Millis(d)) => Some(self.last_time.saturating_sub(d)),
            _ => None,
        }
    }
    fn version_at_time(&self, t: u64) -> u64 {
        self.versions
            .iter()
            .rposition(|(_, _, vt)| *vt <= t)
            .map_or(0, |i| i as u64 + 1)
    }
    fn key_versions(&self, key: &[u8]) -> Vec<u64> {
        self.versions
            .iter()
            .enumerate()
            .filter(|(_, (k, _, _))| k == key)
            .map(|(i, _)| i as u64 + 1)
            .collect()
    }
    /// The point as a version, or beyond retention at the partition level.
    fn resolve(&self, p: Pt) -> Read<u64> {
        let latest = self.latest();
        match p {
            Pt::Latest => Read::Ok(latest),
            Pt::Version(v) => {
                let v = (v as u64) % (latest + 1);
                if v != latest
                    && (v < self.floor
                        || self.horizon().is_some_and(|h| v < self.version_at_time(h)))
                {
                    return Read::Beyond;
                }
                Read::Ok(v)
            }
            Pt::Time(t) => {
                let t = t as u64 % (self.last_time + 50);
                if self.horizon().is_some_and(|h| t < h) {
                    return Read::Beyond;
                }
                let v = self.version_at_time(t);
                if v < self.floor {
                    return Read::Beyond;
                }
                Read::Ok(v)
            }
        }
    }
    /// Value of key at resolved version v, with per-key retention.
    fn value_at(&self, key: &[u8], v: u64) -> Read<Option<Vec<u8>>> {
        let vs = self.key_versions(key);
        let Some(i) = vs.iter().rposition(|x| *x <= v) else {
            return Read::Ok(None);
        };
        if v != self.latest() {
            if self.expired.get(key).is_some_and(|x| vs[i] <= *x) {
                return Read::Beyond;
            }
            if let Some(Ret::Last(n)) = self.retention
                && vs.len() - 1 - i >= n as usize
            {
                return Read::Beyond;
            }
        }
        Read::Ok(self.versions[vs[i] as usize - 1].1.clone())
    }
    fn state_at(&self, v: u64) -> Read<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for k in KEYS {
            match self.value_at(k, v) {
                Read::Beyond => return Read::Beyond,
                Read::Ok(Some(x)) => {
                    out.insert(k.to_vec(), x);
                }
                Read::Ok(None) => {}
            }
        }
        Read::Ok(out)
    }
    /// What pruning to completion removes.
    fn prune(&mut self) {
        match self.retention {
            Some(Ret::Last(n)) => {
                for k in KEYS {
                    let vs = self.key_versions(k);
                    if vs.len() > n as usize {
                        let newest_expired = vs[vs.len() - 1 - n as usize];
                        let e = self.expired.entry(k.to_vec()).or_insert(0);
                        *e = (*e).max(newest_expired);
                    }
                }
            }
            Some(Ret::Millis(_)) => {
                let h = self.horizon().unwrap_or(0);
                if let Some(i) = self.versions.iter().rposition(|(_, _, t)| *t < h) {
                    self.floor = self.floor.max(i as u64 + 1);
                }
            }
            _ => {}
        }
    }

    fn commit(&mut self, dt: i64) {
        let now = (self.last_time as i64 + dt).max(0) as u64;
        let t = now.max(self.last_time);
        if self.staged.is_empty() {
            return;
        }
        self.last_time = t;
        for (k, v) in self.staged.drain(..) {
            self.versions.push((k, v, t));
        }
    }
}

fn to_at(m: &Model, p: Pt) -> At {
    match p {
        Pt::Latest => At::Latest,
        Pt::Version(v) => At::Version(Version(v as u64 % (m.latest() + 1))),
        Pt::Time(t) => At::Time(Timestamp(t as u64 % (m.last_time + 50))),
    }
}

fn retention(r: Ret) -> Retention {
    match r {
        Ret::Unlimited => Retention::Unlimited,
        Ret::Last(n) => Retention::last_versions(n).unwrap(),
        Ret::Millis(ms) => Retention::duration(Duration::from_millis(ms)).unwrap(),
    }
}

fn check<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Result<T, Error>,
    want: Read<T>,
) -> Result<(), TestCaseError> {
    match (got, want) {
        (Ok(g), Read::Ok(w)) => prop_assert_eq!(g, w, "{}", what),
        (Err(e), Read::Beyond) if e.is_beyond_retention() => {}
        (g, w) => prop_assert!(
            false,
            "{}: got {:?}, model says {:?}",
            what,
            g.map(|_| "Ok(..)"),
            w.map_ok()
        ),
    }
    Ok(())
}

trait MapOk {
    fn map_ok(&self) -> &'static str;
}
impl<T> MapOk for Read<T> {
    fn map_ok(&self) -> &'static str {
        match self {
            Read::Ok(_) => "Ok(..)",
            Read::Beyond => "BeyondRetention",
        }
    }
}

fn run<H: Harness>(h: &mut H, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    let mut store = Some(h.fresh());
    // A tiny cache, so eviction is exercised too.
    let cfg = || {
        let mut c = config("model", 0);
        c.cache_entries = 3;
        c
    };
    let mut t: TablePartition<H::S> = TablePartition::open(store.take().unwrap(), cfg()).unwrap();
    for (step, op) in ops.into_iter().enumerate() {
        let what = format!("step {step} {op:?}");
        match op {
            Op::Put(k, v) => {
                t.put(KEYS[k as usize], &[v], None);
                m.staged.push((KEYS[k as usize].to_vec(), Some(vec![v])));
            }
            Op::Delete(k) => {
                t.delete(KEYS[k as usize], None);
                m.staged.push((KEYS[k as usize].to_vec(), None));
            }
            Op::Commit(dt) => {
                let now = (m.last_time as i64 + dt as i64).max(0) as u64;
                t.commit(Timestamp(now), &[]).unwrap();
                m.commit(dt as i64);
                prop_assert_eq!(t.latest_version().0, m.latest(), "{}", what);
            }
            Op::Rewind { target, prefix } => {
                t.commit(Timestamp(m.last_time), &[]).unwrap();
                m.commit(0);
                let target = target as u64 % (m.latest() + 1);
                let range = match prefix {
                    Some(p) => KeyRange::prefix(KEYS[p as usize * 2].to_vec()),
                    None => KeyRange::all(),
                };
                // Model: keys in range changed since target go back to their value then.
                let expected = match m.resolve(Pt::Version(target as u16)) {
                    _ if target > u16::MAX as u64 => unreachable!(),
                    Read::Beyond => Read::Beyond,
                    Read::Ok(tv) => {
                        let changed: BTreeSet<Vec<u8>> = m.versions[tv as usize..]
                            .iter()
                            .map(|(k, _, _)| k.clone())
                            .filter(|k| range.contains(k))
                            .collect();
                        let mut muts = Vec::new();
                        let mut beyond = false;
                        for k in changed {
                            match (m.value_at(&k, tv), m.value_at(&k, m.latest())) {
                                (Read::Ok(then), Read::Ok(now)) if then != now => {
                                    muts.push((k, then))
                                }
                                (Read::Ok(_), Read::Ok(_)) => {}
                                _ => beyond = true,
                            }
                        }
                        if beyond { Read::Beyond } else { Read::Ok(muts) }
                    }
                };
                let got = t.rewind(At::Version(Version(target)), &range).map(|p| {
                    p.changes
                        .into_iter()
                        .map(|d| (d.key, d.before.map(|b| b.value)))
                        .collect::<Vec<_>>()
                });
                let ok = matches!(expected, Read::Ok(_));
                if let Read::Ok(muts) = &expected {
                    m.staged.extend(muts.iter().cloned());
                }
                check(&what, got, expected)?;
                if ok {
                    let now = m.last_time + 1;
                    t.commit(Timestamp(now), &[]).unwrap();
                    m.commit(1);
                }
            }
            Op::SetRetention(r) => {
                t.set_retention(retention(r)).unwrap();
                m.retention = Some(r);
            }
            Op::Prune(budget) => {
                // Prune to completion in small steps, so the model knows
                // exactly what is physically gone.
                let mut steps = 0;
                while !t.prune(budget as usize).unwrap().done {
                    steps += 1;
                    prop_assert!(steps < 10_000, "pruning does not finish");
                }
                m.prune();
            }
            Op::Crash => {
                let keep = m.retention.map(retention).unwrap_or(Retention::Unlimited);
                let s = h.reopen(t.into_store().unwrap());
                t = TablePartition::open(s, cfg().retention(keep)).unwrap();
                m.staged.clear();
                prop_assert_eq!(t.latest_version().0, m.latest(), "{}", what);
            }
            Op::Get(k, p) => {
                let key = KEYS[k as usize];
                let want = match m.resolve(p) {
                    Read::Beyond => Read::Beyond,
                    Read::Ok(v) => m.value_at(key, v),
                };
                let got = t
                    .reader()
                    .get_at(key, to_at(&m, p))
                    .map(|o| o.map(|v| v.value));
                check(&what, got, want)?;
                // The owner's read-your-writes view.
                let staged = m
                    .staged
                    .iter()
                    .rev()
                    .find(|(sk, _)| sk == key)
                    .map(|(_, v)| v.clone());
                let owner = staged.unwrap_or_else(|| match m.value_at(key, m.latest()) {
                    Read::Ok(v) => v,
                    Read::Beyond => unreachable!("latest never expires"),
                });
                prop_assert_eq!(t.get(key).unwrap(), owner.clone(), "{} owner view", what);
                prop_assert_eq!(
                    t.read(key).unwrap(),
                    owner,
                    "{} owner view through the cache",
                    what
                );
            }
            Op::History(k) => {
                let key = KEYS[k as usize];
                let got = t
                    .reader()
                    .history(
                        key,
                        &HistoryQuery {
                            limit: 10_000,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                let got: Vec<(u64, Option<Vec<u8>>)> = got
                    .entries
                    .into_iter()
                    .map(|e| (e.version.0, e.value))
                    .collect();
                let gone = m.expired.get(key).copied().unwrap_or(0);
                let mut want: Vec<(u64, Option<Vec<u8>>)> = m
                    .key_versions(key)
                    .into_iter()
                    .rev()
                    .filter(|v| *v > m.floor && *v > gone)
                    .map(|v| (v, m.versions[v as usize - 1].1.clone()))
                    .collect();
                match m.retention {
                    Some(Ret::Last(n)) => want.truncate(n as usize),
                    Some(Ret::Millis(_)) => {
                        let h = m.horizon().unwrap_or(0);
                        want.retain(|(v, _)| m.time_of(*v) >= h);
                    }
                    _ => {}
                }
                prop_assert_eq!(got, want, "{}", what);
            }
            Op::Scan(p, limit) => {
                let want = match m.resolve(p) {
                    Read::Beyond => Read::Beyond,
                    Read::Ok(v) => m.state_at(v),
                };
                let r = t.reader();
                let mut token = None;
                let got: Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> = (|| {
                    let mut out = BTreeMap::new();
                    loop {
                        let page = r.scan(&ScanRequest {
                            range: KeyRange::all(),
                            at: to_at(&m, p),
                            limit: limit as usize,
                            token: token.take(),
                        })?;
                        assert!(page.items.len() <= limit as usize);
                        for (k, v) in page.items {
                            assert!(out.insert(k, v.value).is_none(), "a key twice");
                        }
                        match page.next {
                            Some(n) => token = Some(n),
                            None => return Ok(out),
                        }
                    }
                })();
                check(&what, got, want)?;
            }
            Op::Diff(p) => {
                let want = match m.resolve(p) {
                    Read::Beyond => Read::Beyond,
                    Read::Ok(v) => match (m.state_at(v), m.state_at(m.latest())) {
                        (Read::Ok(a), Read::Ok(b)) => {
                            // Only keys written since v are examined, so only they can be beyond.
                            let keys: BTreeSet<Vec<u8>> =
                                a.keys().chain(b.keys()).cloned().collect();
                            Read::Ok(
                                keys.into_iter()
                                    .filter(|k| a.get(k) != b.get(k))
                                    .map(|k| (k.clone(), a.get(&k).cloned(), b.get(&k).cloned()))
                                    .collect::<Vec<_>>(),
                            )
                        }
                        _ => {
                            // Beyond for the state; the diff is beyond only if a changed key is.
                            let changed: BTreeSet<Vec<u8>> = m.versions[v as usize..]
                                .iter()
                                .map(|(k, _, _)| k.clone())
                                .collect();
                            if changed
                                .iter()
                                .any(|k| matches!(m.value_at(k, v), Read::Beyond))
                            {
                                Read::Beyond
                            } else {
                                let mut out = Vec::new();
                                for k in changed {
                                    let (Read::Ok(a), Read::Ok(b)) =
                                        (m.value_at(&k, v), m.value_at(&k, m.latest()))
                                    else {
                                        unreachable!()
                                    };
                                    if a != b {
                                        out.push((k, a, b));
                                    }
                                }
                                Read::Ok(out)
                            }
                        }
                    },
                };
                let got = t
                    .reader()
                    .diff(to_at(&m, p), At::Latest, &KeyRange::all(), 100)
                    .map(|d| {
                        d.into_iter()
                            .map(|e| (e.key, e.before.map(|x| x.value), e.after.map(|x| x.value)))
                            .collect::<Vec<_>>()
                    });
                check(&what, got, want)?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&mut common::Mem, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn rocksdb_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&mut common::Rocks::new(), ops)?;
    }
}
