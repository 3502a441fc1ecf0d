//! The storage contract as a test suite, run against every [`KvStore`]
//! implementation (the in-memory one and RocksDB).
//!
//! Each check takes a fresh store from the factory.

// A conformance suite for implementers of the seam: a failed check panics with its message, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{Cf, KvBatch, KvCursor, KvStore};

/// Runs every conformance check against stores made by `make`.
pub fn run_all<S: KvStore>(make: &mut dyn FnMut() -> S) {
    get_put_delete(&make());
    batches_are_atomic_and_ordered(&make());
    column_families_are_separate(&make());
    cursor_walks_in_order(&make());
    cursor_seeks(&make());
    empty_store_cursor(&make());
    unlogged_writes_mix_with_logged_ones(&make());
}

/// One write of a batch: column family, key, value (`None`: delete).
type Op<'a> = (Cf, &'a [u8], Option<&'a [u8]>);

fn write<S: KvStore>(s: &S, ops: &[Op<'_>]) {
    let mut b = s.batch();
    for (cf, k, v) in ops {
        match v {
            Some(v) => b.put(*cf, k, v),
            None => b.delete(*cf, k),
        }
    }
    assert_eq!(b.len(), ops.len());
    s.write(b).expect("write");
}

fn get_put_delete<S: KvStore>(s: &S) {
    assert_eq!(s.get(Cf::Latest, b"a").unwrap(), None);
    write(s, &[(Cf::Latest, b"a", Some(b"1"))]);
    assert_eq!(s.get(Cf::Latest, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    write(s, &[(Cf::Latest, b"a", Some(b"2"))]);
    assert_eq!(s.get(Cf::Latest, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    write(s, &[(Cf::Latest, b"a", None)]);
    assert_eq!(s.get(Cf::Latest, b"a").unwrap(), None);
    // Empty keys and values are legal.
    write(s, &[(Cf::Meta, b"", Some(b""))]);
    assert_eq!(s.get(Cf::Meta, b"").unwrap().as_deref(), Some(&b""[..]));
}

fn batches_are_atomic_and_ordered<S: KvStore>(s: &S) {
    // Later operations in a batch win over earlier ones on the same key.
    write(
        s,
        &[
            (Cf::History, b"k", Some(b"1")),
            (Cf::History, b"k", None),
            (Cf::History, b"k", Some(b"3")),
        ],
    );
    assert_eq!(
        s.get(Cf::History, b"k").unwrap().as_deref(),
        Some(&b"3"[..])
    );
    write(
        s,
        &[(Cf::History, b"k", Some(b"4")), (Cf::History, b"k", None)],
    );
    assert_eq!(s.get(Cf::History, b"k").unwrap(), None);
    let b = s.batch();
    assert!(b.is_empty());
    s.write(b).unwrap();
    s.flush().unwrap();
}

fn column_families_are_separate<S: KvStore>(s: &S) {
    for (i, cf) in Cf::ALL.iter().enumerate() {
        write(s, &[(*cf, b"same", Some(&[i as u8]))]);
    }
    for (i, cf) in Cf::ALL.iter().enumerate() {
        assert_eq!(s.get(*cf, b"same").unwrap(), Some(vec![i as u8]), "{cf:?}");
        let mut c = s.cursor(*cf).unwrap();
        c.seek_to_first();
        let mut n = 0;
        while c.valid() {
            n += 1;
            c.next();
        }
        c.status().unwrap();
        assert_eq!(n, 1, "{cf:?} holds only its own key");
    }
}

fn keys(n: u16) -> Vec<Vec<u8>> {
    // Includes keys that are prefixes of others, and zero bytes.
    let mut ks: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("k{:03}", i * 2).into_bytes())
        .collect();
    ks.push(b"k".to_vec());
    ks.push(b"k\x00".to_vec());
    ks.push(vec![0xff, 0xff]);
    ks.sort();
    ks
}

fn cursor_walks_in_order<S: KvStore>(s: &S) {
    let ks = keys(50);
    let mut b = s.batch();
    for k in ks.iter().rev() {
        b.put(Cf::Versions, k, k);
    }
    s.write(b).unwrap();
    let mut c = s.cursor(Cf::Versions).unwrap();
    c.seek_to_first();
    let mut seen = Vec::new();
    while c.valid() {
        assert_eq!(c.key(), c.value());
        seen.push(c.key().to_vec());
        c.next();
    }
    c.status().unwrap();
    assert_eq!(seen, ks);
    c.seek_to_last();
    let mut back = Vec::new();
    while c.valid() {
        back.push(c.key().to_vec());
        c.prev();
    }
    back.reverse();
    assert_eq!(back, ks);
}

fn cursor_seeks<S: KvStore>(s: &S) {
    let ks = keys(10);
    let mut b = s.batch();
    for k in &ks {
        b.put(Cf::Commits, k, b"v");
    }
    s.write(b).unwrap();
    let mut c = s.cursor(Cf::Commits).unwrap();
    c.seek(b"k001");
    assert_eq!(c.key(), b"k002");
    c.seek(b"k002");
    assert_eq!(c.key(), b"k002");
    c.seek_for_prev(b"k003");
    assert_eq!(c.key(), b"k002");
    c.seek_for_prev(b"k002");
    assert_eq!(c.key(), b"k002");
    c.prev();
    assert_eq!(c.key(), b"k000");
    c.prev();
    assert_eq!(c.key(), b"k\x00");
    c.seek(b"\xff\xff\xff");
    assert!(!c.valid());
    c.status().unwrap();
    c.seek_for_prev(b"");
    assert!(!c.valid());
    c.seek_for_prev(b"\xff\xff\xff");
    assert_eq!(c.key(), b"\xff\xff");
}

fn empty_store_cursor<S: KvStore>(s: &S) {
    let mut c = s.cursor(Cf::Latest).unwrap();
    c.seek_to_first();
    assert!(!c.valid());
    c.seek_to_last();
    assert!(!c.valid());
    c.seek(b"x");
    assert!(!c.valid());
    c.status().unwrap();
}

fn unlogged_writes_mix_with_logged_ones<S: KvStore>(s: &S) {
    write(s, &[(Cf::Latest, b"a", Some(b"1"))]);
    let mut b = s.batch();
    b.put(Cf::Latest, b"a", b"2");
    b.put(Cf::History, b"h", b"x");
    s.write_unlogged(b).expect("unlogged write");
    // Visible at once, like a logged write.
    assert_eq!(s.get(Cf::Latest, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(
        s.get(Cf::History, b"h").unwrap().as_deref(),
        Some(&b"x"[..])
    );
    // A logged write after it (which flushes it first, where that matters).
    write(s, &[(Cf::Latest, b"b", Some(b"3"))]);
    assert_eq!(s.get(Cf::Latest, b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.get(Cf::Latest, b"b").unwrap().as_deref(), Some(&b"3"[..]));
    s.flush().expect("flush");
    assert_eq!(
        s.get(Cf::History, b"h").unwrap().as_deref(),
        Some(&b"x"[..])
    );
}
