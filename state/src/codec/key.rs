//! Order-preserving key encodings.
//!
//! Integers are big-endian with the sign bit flipped, strings and byte
//! strings are their bytes (escaped when nested in a tuple), tuples are their
//! components in order. Implement [`OrderedKey`] for your own key types with
//! the same guarantee: encoding preserves order.

use crate::codec::escape::{escape_into, unescape};
use crate::{Error, Result};

/// A key type whose encoding sorts like its values.
pub trait OrderedKey: Sized {
    /// Appends the key's top-level encoding to `out`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Decodes a whole top-level encoding.
    fn decode_key(bytes: &[u8]) -> Result<Self>;
    /// Appends a prefix-free encoding, for use inside composite keys.
    fn encode_nested(&self, out: &mut Vec<u8>);
    /// Decodes a prefix-free encoding from the front of `bytes`, returning
    /// the value and the bytes consumed.
    fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)>;

    /// The top-level encoding as a new vector.
    fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_key(&mut out);
        out
    }
}

fn short(what: &str, bytes: &[u8]) -> Error {
    Error::Codec(format!(
        "cannot decode {what} key from {} bytes",
        bytes.len()
    ))
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl OrderedKey for $t {
            fn encode_key(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_be_bytes()); }
            fn decode_key(bytes: &[u8]) -> Result<Self> {
                let arr = bytes.try_into().map_err(|_| short(stringify!($t), bytes))?;
                Ok(<$t>::from_be_bytes(arr))
            }
            fn encode_nested(&self, out: &mut Vec<u8>) { self.encode_key(out) }
            fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
                const N: usize = std::mem::size_of::<$t>();
                let head = bytes.get(..N).ok_or_else(|| short(stringify!($t), bytes))?;
                Ok((Self::decode_key(head)?, N))
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, u128);

macro_rules! signed {
    ($($t:ty => $u:ty),*) => {$(
        impl OrderedKey for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                let flipped = (*self as $u) ^ (1 << (<$u>::BITS - 1));
                out.extend_from_slice(&flipped.to_be_bytes());
            }
            fn decode_key(bytes: &[u8]) -> Result<Self> {
                let arr = bytes.try_into().map_err(|_| short(stringify!($t), bytes))?;
                Ok((<$u>::from_be_bytes(arr) ^ (1 << (<$u>::BITS - 1))) as $t)
            }
            fn encode_nested(&self, out: &mut Vec<u8>) { self.encode_key(out) }
            fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
                const N: usize = std::mem::size_of::<$t>();
                let head = bytes.get(..N).ok_or_else(|| short(stringify!($t), bytes))?;
                Ok((Self::decode_key(head)?, N))
            }
        }
    )*};
}
signed!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

impl OrderedKey for bool {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.push(*self as u8)
    }
    fn decode_key(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(short("bool", bytes)),
        }
    }
    fn encode_nested(&self, out: &mut Vec<u8>) {
        self.encode_key(out)
    }
    fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
        Ok((
            Self::decode_key(bytes.get(..1).ok_or_else(|| short("bool", bytes))?)?,
            1,
        ))
    }
}

impl OrderedKey for Vec<u8> {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self)
    }
    fn decode_key(bytes: &[u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
    fn encode_nested(&self, out: &mut Vec<u8>) {
        escape_into(self, out)
    }
    fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
        unescape(bytes)
            .ok_or_else(|| Error::Codec("malformed escaped bytes in composite key".into()))
    }
}

impl OrderedKey for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
    fn decode_key(bytes: &[u8]) -> Result<Self> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| Error::Codec(format!("string key is not UTF-8: {e}")))
    }
    fn encode_nested(&self, out: &mut Vec<u8>) {
        escape_into(self.as_bytes(), out)
    }
    fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
        let (raw, n) = Vec::<u8>::decode_nested(bytes)?;
        Ok((
            String::from_utf8(raw)
                .map_err(|e| Error::Codec(format!("string key is not UTF-8: {e}")))?,
            n,
        ))
    }
}

macro_rules! tuple {
    ($($name:ident),+) => {
        impl<$($name: OrderedKey),+> OrderedKey for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode_key(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode_nested(out);)+
            }
            fn decode_key(bytes: &[u8]) -> Result<Self> {
                let (v, n) = Self::decode_nested(bytes)?;
                if n != bytes.len() {
                    return Err(Error::Codec(format!("{} trailing bytes after composite key", bytes.len() - n)));
                }
                Ok(v)
            }
            fn encode_nested(&self, out: &mut Vec<u8>) { self.encode_key(out) }
            #[allow(non_snake_case)]
            fn decode_nested(bytes: &[u8]) -> Result<(Self, usize)> {
                let mut at = 0;
                $(let ($name, n) = $name::decode_nested(&bytes[at..])?; at += n;)+
                Ok((($($name,)+), at))
            }
        }
    };
}
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_order<K: OrderedKey + Ord + std::fmt::Debug + PartialEq>(
        a: K,
        b: K,
    ) -> std::result::Result<(), TestCaseError> {
        let (ea, eb) = (a.to_key_bytes(), b.to_key_bytes());
        prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
        prop_assert_eq!(K::decode_key(&ea).unwrap(), a);
        Ok(())
    }

    proptest! {
        #[test] fn i64_order(a: i64, b: i64) { check_order(a, b)?; }
        #[test] fn u32_order(a: u32, b: u32) { check_order(a, b)?; }
        #[test] fn i8_order(a: i8, b: i8) { check_order(a, b)?; }
        #[test] fn string_order(a: String, b: String) { check_order(a, b)?; }
        #[test] fn tuple_order(a: (String, i32), b: (String, i32)) { check_order(a, b)?; }
        #[test] fn bytes_tuple_order(a: (Vec<u8>, u8, bool), b: (Vec<u8>, u8, bool)) { check_order(a, b)?; }
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(u64::decode_key(&[1, 2, 3]).is_err());
        assert!(String::decode_key(&[0xff, 0xfe]).is_err());
        assert!(<(String, u8)>::decode_key(&[b'a', 0, 1]).is_err());
        assert!(bool::decode_key(&[7]).is_err());
    }
}
