//! Encodings: order-preserving keys, versioned values, and the byte escaping
//! that makes composite storage keys sort correctly.
//!
//! Invariant: for every key type, `a < b` in the type's natural order iff
//! `encode(a) < encode(b)` bytewise, so a RocksDB scan returns keys in their
//! natural order.

mod escape;
mod key;
mod value;

pub use escape::{ESCAPED_TERMINATOR, escape_into, unescape};
pub use key::OrderedKey;
pub use value::{Bincode, Json, VALUE_FORMAT_BINCODE, VALUE_FORMAT_JSON, ValueCodec};

/// Renders key bytes for an error message: as text when printable UTF-8,
/// else as hex, truncated to 64 bytes.
pub fn display_key(key: &[u8]) -> String {
    let shown = &key[..key.len().min(64)];
    let more = if key.len() > 64 { "…" } else { "" };
    match std::str::from_utf8(shown) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}{more}"),
        _ => {
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{more}")
        }
    }
}
