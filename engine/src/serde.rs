//! Codecs for record keys and values on Kafka topics: JSON, bincode, UTF-8
//! strings, raw bytes, or your own [`Serde`] implementation.
//!
//! Unlike table values (which carry a format byte, see
//! `strata_state::codec`), topic payloads are what other producers and
//! consumers expect: plain JSON, plain bincode.

use std::marker::PhantomData;

use serde::{Serialize, de::DeserializeOwned};

/// Encodes and decodes one type to and from topic payloads.
pub trait Serde<T>: Send + Sync + 'static {
    /// Encodes a value.
    fn encode(&self, value: &T) -> Result<Vec<u8>, String>;
    /// Decodes a payload; the error says what is wrong with it.
    fn decode(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON via serde_json.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Clone for Json<T> {
    fn clone(&self) -> Self {
        Json(PhantomData)
    }
}

/// JSON codec for `T`.
pub fn json<T>() -> Json<T> {
    Json(PhantomData)
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for Json<T> {
    fn encode(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| format!("json encode: {e}"))
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("json decode: {e}"))
    }
}

/// bincode 2 (standard configuration) via serde.
pub struct Bincode<T>(PhantomData<fn() -> T>);

impl<T> Clone for Bincode<T> {
    fn clone(&self) -> Self {
        Bincode(PhantomData)
    }
}

/// bincode codec for `T`.
pub fn bincode<T>() -> Bincode<T> {
    Bincode(PhantomData)
}

impl<T: Serialize + DeserializeOwned + 'static> Serde<T> for Bincode<T> {
    fn encode(&self, value: &T) -> Result<Vec<u8>, String> {
        ::bincode::serde::encode_to_vec(value, ::bincode::config::standard())
            .map_err(|e| format!("bincode encode: {e}"))
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, String> {
        let (v, n) = ::bincode::serde::decode_from_slice(bytes, ::bincode::config::standard())
            .map_err(|e| format!("bincode decode: {e}"))?;
        if n != bytes.len() {
            return Err(format!(
                "bincode decode: {} trailing bytes",
                bytes.len() - n
            ));
        }
        Ok(v)
    }
}

/// UTF-8 strings, as is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8;

impl Serde<String> for Utf8 {
    fn encode(&self, value: &String) -> Result<Vec<u8>, String> {
        Ok(value.as_bytes().to_vec())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
    }
}

/// Raw bytes, as is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bytes;

impl Serde<Vec<u8>> for Bytes {
    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(value.clone())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        let j = json::<(String, i64)>();
        let b = j.encode(&("a".into(), 5)).unwrap();
        assert_eq!(b, br#"["a",5]"#);
        assert_eq!(j.decode(&b).unwrap(), ("a".into(), 5));
        assert!(j.decode(b"{nope").unwrap_err().contains("json decode"));
        let bc = bincode::<u64>();
        assert_eq!(bc.decode(&bc.encode(&77).unwrap()).unwrap(), 77);
        assert!(bc.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Utf8.decode(&[0xff]).is_err());
    }
}
