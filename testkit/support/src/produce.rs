//! Writing test input: records through one producer, in batches of at most
//! 10,000, each batch waited for before the next.

use std::collections::BTreeMap;

use strata_engine::OutRecord;
use strata_engine::kafka::client::KafkaConfig;
use strata_engine::kafka::output::OutputProducer;

const BATCH: usize = 10_000;

/// Produces `records` to the cluster at `bootstrap`, in order.
pub fn produce(bootstrap: &str, records: impl IntoIterator<Item = OutRecord>) {
    let producer = OutputProducer::new(&KafkaConfig::new(bootstrap), BTreeMap::new()).unwrap();
    let mut batch = Vec::with_capacity(BATCH);
    for r in records {
        batch.push(r);
        if batch.len() == BATCH {
            producer.produce(&batch).unwrap();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        producer.produce(&batch).unwrap();
    }
}

/// A record of `topic` with a UTF-8 key and `value` as its JSON text.
pub fn record(topic: &str, key: impl Into<String>, value: &str) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: Some(key.into().into_bytes()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
    }
}

/// Produces (key, number) pairs to `events`, each value the number's JSON
/// text.
pub fn produce_numbers<K: AsRef<str>>(bootstrap: &str, records: &[(K, i64)]) {
    produce(
        bootstrap,
        records
            .iter()
            .map(|(k, v)| record("events", k.as_ref(), &v.to_string())),
    );
}
