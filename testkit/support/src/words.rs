//! The word counts of the exactly-once tests: record `i` is word `w<i % words>`
//! with count 1, summed per word in table `counts`.

use std::collections::BTreeMap;

use strata_engine::RunningApp;
use strata_state::codec::{Bincode, OrderedKey, ValueCodec};

use crate::produce::{produce, record};

/// Produces records `from..from + n` to `topic`, one word each.
pub fn produce_words(bootstrap: &str, topic: &str, from: u64, n: u64, words: u64) {
    produce(
        bootstrap,
        (from..from + n).map(|i| record(topic, format!("w{}", i % words), "1")),
    );
}

/// Word -> count, as table `counts` of `app` holds them now (words not
/// there yet left out).
pub fn word_counts(app: &RunningApp, words: u64) -> BTreeMap<String, u64> {
    let mut got = BTreeMap::new();
    for i in 0..words {
        let w = format!("w{i}");
        if let Some(r) = app.reader_for_key("counts", w.as_bytes())
            && let Some(v) = r.get(&w.clone().to_key_bytes()).unwrap()
        {
            got.insert(w, ValueCodec::<u64>::decode(&Bincode, &v.value).unwrap());
        }
    }
    got
}
