//! Waiting for a consumer group to have committed what was produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Waits until group `group` has committed, on partitions `0..partitions` of
/// `topic`, offsets equal to `counts` (partition -> records produced, from
/// an empty topic).
///
/// # Panics
///
/// If that has not happened within `timeout`.
pub fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: u32,
    counts: &BTreeMap<u32, u64>,
    timeout: Duration,
) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let end = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    while Instant::now() < end {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p as i32);
        }
        if let Ok(c) = consumer.committed_offsets(tpl, Duration::from_secs(5)) {
            last = c
                .elements()
                .iter()
                .map(|e| {
                    let o = match e.offset() {
                        Offset::Offset(o) => o as u64,
                        _ => 0,
                    };
                    (e.partition() as u32, o)
                })
                .collect::<BTreeMap<u32, u64>>();
            if counts.iter().all(|(p, n)| last.get(p) == Some(n)) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("not all input committed after {timeout:?}: committed {last:?}, produced {counts:?}");
}
