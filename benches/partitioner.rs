//! What checking every input record against its topic's declared
//! partitioner costs on the hot path (`RouteCheck::record`, called by each
//! task for every keyed record), against the bare murmur2 hash of the same
//! keys measured in the same run.
//!
//! Cases, over the same 100,000 keys of 9-12 bytes (as `user-123456`):
//! - baseline: `murmur2(key) % 4`, summed so it is not optimised away;
//! - `record`, declared murmur2, records placed by murmur2 (the steady
//!   state of a right declaration: one hash, one shared counter);
//! - `record`, declared murmur2, records placed by CRC32 (a contradicted
//!   declaration: two hashes, two shared counters);
//! - `record` from two threads at once on one check (two workers sharing a
//!   topic), right declaration: what the shared counter's cache line costs.
//!
//! Reported as ns per record and as a ratio to the baseline. Nothing
//! asserts a time. `cargo bench --bench partitioner`.

// A benchmark: panics on a failed step, prints its figures, measures raw RocksDB as its baseline and exits with a usage error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use strata::partitioner::{Partitioner, RouteCheck, murmur2};
use strata_state::Partition;

const KEYS: usize = 100_000;
const ROUNDS: usize = 20;
const PARTITIONS: u32 = 4;

fn per_record(f: impl Fn(&[Vec<u8>]), keys: &[Vec<u8>]) -> f64 {
    f(keys); // warm-up
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        f(keys);
    }
    t0.elapsed().as_nanos() as f64 / (ROUNDS * keys.len()) as f64
}

fn main() {
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| format!("user-{}", i * 7919).into_bytes())
        .collect();
    let placed = |p: &Partitioner| -> Vec<Partition> {
        keys.iter()
            .map(|k| p.partition(k, PARTITIONS).unwrap())
            .collect()
    };
    let by_murmur = placed(&Partitioner::Murmur2);
    let by_crc = placed(&Partitioner::Crc32);

    let baseline = per_record(
        |ks| {
            let mut s = 0u64;
            for k in ks {
                s += u64::from((murmur2(black_box(k)) & 0x7fff_ffff) % PARTITIONS);
            }
            black_box(s);
        },
        &keys,
    );
    // A check declared murmur2, fed records placed by `placed`.
    let checked = |placed: &[Partition]| -> (f64, RouteCheck) {
        let c = RouteCheck::new("t", Partitioner::Murmur2, PARTITIONS);
        let ns = per_record(
            |ks| {
                for (k, p) in ks.iter().zip(placed) {
                    c.record(Some(black_box(k)), *p);
                }
            },
            &keys,
        );
        (ns, c)
    };
    let (declared_right, right) = checked(&by_murmur);
    let (declared_wrong, wrong) = checked(&by_crc);
    let shared = Arc::new(RouteCheck::new("t", Partitioner::Murmur2, PARTITIONS));
    let (keys2, placed2) = (Arc::new(keys.clone()), Arc::new(by_murmur.clone()));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (c, ks, ps) = (shared.clone(), keys2.clone(), placed2.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    for (k, p) in ks.iter().zip(ps.iter()) {
                        c.record(Some(black_box(k)), *p);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // Wall time per record of one thread (each thread did ROUNDS * KEYS).
    let two_threads = t0.elapsed().as_nanos() as f64 / (ROUNDS * KEYS) as f64;

    println!("command: cargo bench --bench partitioner");
    println!("{KEYS} keys, {ROUNDS} rounds, {PARTITIONS} partitions\n");
    println!("| case | ns/record | / baseline |");
    println!("|---|---:|---:|");
    for (name, ns) in [
        ("baseline: murmur2(key) % 4", baseline),
        ("record, declaration right", declared_right),
        ("record, declaration contradicted", declared_wrong),
        (
            "record, declaration right, 2 threads on one check",
            two_threads,
        ),
    ] {
        println!("| {name} | {ns:.1} | {:.2} |", ns / baseline);
    }
    println!(
        "\nmismatches counted: right {} (want 0), contradicted {} of {}",
        right.mismatched(),
        wrong.mismatched(),
        wrong.checked()
    );
}
