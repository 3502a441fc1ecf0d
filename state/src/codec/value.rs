//! Value codecs: serde types behind a one-byte format tag.
//!
//! The first byte of every stored value names its encoding, so a future
//! format can be read alongside today's and a value written by another codec
//! is rejected with a clear error instead of being misread.

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Format byte of bincode-encoded values (bincode 2, standard config).
pub const VALUE_FORMAT_BINCODE: u8 = 1;
/// Format byte of JSON-encoded values.
pub const VALUE_FORMAT_JSON: u8 = 2;

/// Turns values into bytes and back.
pub trait ValueCodec<V>: Send + Sync + 'static {
    /// Encodes a value, format byte first.
    fn encode(&self, value: &V) -> Result<Vec<u8>>;
    /// Decodes bytes produced by [`ValueCodec::encode`].
    fn decode(&self, bytes: &[u8]) -> Result<V>;
}

fn check_format(bytes: &[u8], expected: u8, name: &str) -> Result<()> {
    match bytes.first() {
        Some(&b) if b == expected => Ok(()),
        Some(&b) => Err(Error::Codec(format!(
            "value has format byte {b}, expected {expected} ({name}); was it written by another codec?"
        ))),
        None => Err(Error::Codec("empty value: missing format byte".into())),
    }
}

/// bincode (standard configuration) behind [`VALUE_FORMAT_BINCODE`].
#[derive(Copy, Clone, Debug, Default)]
pub struct Bincode;

impl<V: Serialize + DeserializeOwned> ValueCodec<V> for Bincode {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        let mut out = vec![VALUE_FORMAT_BINCODE];
        bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
            .map_err(|e| Error::Codec(format!("bincode encode: {e}")))?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        check_format(bytes, VALUE_FORMAT_BINCODE, "bincode")?;
        let (v, n) = bincode::serde::decode_from_slice(&bytes[1..], bincode::config::standard())
            .map_err(|e| Error::Codec(format!("bincode decode: {e}")))?;
        if n + 1 != bytes.len() {
            return Err(Error::Codec(format!(
                "bincode decode: {} trailing bytes",
                bytes.len() - n - 1
            )));
        }
        Ok(v)
    }
}

/// JSON behind [`VALUE_FORMAT_JSON`]; readable by clients that do not know
/// the Rust types.
#[derive(Copy, Clone, Debug, Default)]
pub struct Json;

impl<V: Serialize + DeserializeOwned> ValueCodec<V> for Json {
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        let mut out = vec![VALUE_FORMAT_JSON];
        serde_json::to_writer(&mut out, value)
            .map_err(|e| Error::Codec(format!("json encode: {e}")))?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        check_format(bytes, VALUE_FORMAT_JSON, "json")?;
        serde_json::from_slice(&bytes[1..]).map_err(|e| Error::Codec(format!("json decode: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        customer: String,
        cents: i64,
        tags: Vec<String>,
    }

    proptest! {
        #[test]
        fn bincode_round_trips(customer: String, cents: i64, tags: Vec<String>) {
            let o = Order { customer, cents, tags };
            let bytes = Bincode.encode(&o).unwrap();
            prop_assert_eq!(bytes[0], VALUE_FORMAT_BINCODE);
            prop_assert_eq!(ValueCodec::<Order>::decode(&Bincode, &bytes).unwrap(), o);
        }

        #[test]
        fn json_round_trips(customer: String, cents: i64) {
            let o = Order { customer, cents, tags: vec![] };
            let bytes = Json.encode(&o).unwrap();
            prop_assert_eq!(ValueCodec::<Order>::decode(&Json, &bytes).unwrap(), o);
        }
    }

    #[test]
    fn wrong_format_and_garbage_are_errors() {
        let json = Json.encode(&5u32).unwrap();
        let err = ValueCodec::<u32>::decode(&Bincode, &json).unwrap_err();
        assert!(err.to_string().contains("format byte 2"), "{err}");
        assert!(ValueCodec::<u32>::decode(&Bincode, &[]).is_err());
        assert!(ValueCodec::<Order>::decode(&Bincode, &[1, 0xff, 0xff, 0xff]).is_err());
        let mut ok = Bincode.encode(&7u32).unwrap();
        ok.push(9);
        assert!(
            ValueCodec::<u32>::decode(&Bincode, &ok)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
    }
}
