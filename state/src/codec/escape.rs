//! Prefix-free, order-preserving escaping of byte strings.
//!
//! `0x00` becomes `0x00 0xFF` and the string ends with `0x00 0x01`. For any
//! byte strings `a < b`, `escape(a) < escape(b)`, and no escaped string is a
//! prefix of another, so `escape(key) ++ suffix` sorts by key first, then by
//! suffix: this is what keeps a key's history contiguous in storage.

/// The two bytes that end an escaped string.
pub const ESCAPED_TERMINATOR: [u8; 2] = [0x00, 0x01];

/// Appends the escaped form of `raw`, terminator included, to `out`.
pub fn escape_into(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len() + 2);
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == 0) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(&[0x00, 0xFF]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&ESCAPED_TERMINATOR);
}

/// Reads one escaped string from the front of `input`; returns the raw bytes
/// and the number of input bytes consumed, or `None` when malformed.
pub fn unescape(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut raw = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == 0 {
            match input.get(i + 1) {
                Some(0xFF) => raw.push(0),
                Some(0x01) => return Some((raw, i + 2)),
                _ => return None,
            }
            i += 2;
        } else {
            raw.push(input[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn esc(raw: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        escape_into(raw, &mut v);
        v
    }

    proptest! {
        #[test]
        fn round_trips(raw in proptest::collection::vec(any::<u8>(), 0..40), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut e = esc(&raw);
            let n = e.len();
            e.extend_from_slice(&tail);
            prop_assert_eq!(unescape(&e), Some((raw, n)));
        }

        #[test]
        fn preserves_order_with_suffixes(
            a in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..12),
            b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..12),
            sa in any::<u64>(), sb in any::<u64>(),
        ) {
            let mut ea = esc(&a); ea.extend_from_slice(&sa.to_be_bytes());
            let mut eb = esc(&b); eb.extend_from_slice(&sb.to_be_bytes());
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b).then(sa.cmp(&sb)));
        }
    }

    #[test]
    fn malformed_is_rejected() {
        assert_eq!(unescape(&[1, 2, 3]), None);
        assert_eq!(unescape(&[0x00, 0x05]), None);
        assert_eq!(unescape(&[0x00]), None);
    }
}
