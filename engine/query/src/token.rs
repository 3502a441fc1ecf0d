//! Page tokens of History, Scan and Diff: opaque to clients, sealed with a
//! CRC, and tied to the request they continue.
//!
//! A token is `[format][kind][identity: u32][body: bincode][crc32: u32]`.
//! The identity is a CRC of the request with its token, page size and
//! options cleared, so a token replayed with other arguments (another
//! table, key, range or point) is rejected as INVALID_ARGUMENT instead of
//! reading something else.

use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::QueryError;

const FORMAT: u8 = 1;

/// Which RPC a token belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    History = 1,
    Scan = 2,
    Diff = 3,
    /// A scatter-gather (Scan or Diff over every partition).
    Gather = 4,
}

/// The identity of a request: what a token must be replayed with.
pub(crate) fn identity<M: Message>(request_without_paging: &M) -> u32 {
    crc32fast::hash(&request_without_paging.encode_to_vec())
}

/// Seals a token body.
pub(crate) fn seal<T: Serialize>(
    kind: Kind,
    identity: u32,
    body: &T,
) -> Result<Vec<u8>, QueryError> {
    let mut out = vec![FORMAT, kind as u8];
    out.extend_from_slice(&identity.to_be_bytes());
    let b = bincode::serde::encode_to_vec(body, bincode::config::standard())
        .map_err(|e| QueryError::Internal(format!("encoding a page token: {e}")))?;
    out.extend_from_slice(&b);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Opens a token sealed by [`seal`] for the same kind of request and the
/// same identity.
pub(crate) fn open<T: DeserializeOwned>(
    kind: Kind,
    identity: u32,
    token: &[u8],
) -> Result<T, QueryError> {
    let bad = |why: &str| {
        QueryError::invalid(format!(
            "invalid page_token: {why}; pass the next_page_token of the previous page with the same arguments, \
             or start again without a token"
        ))
    };
    if token.len() < 10 {
        return Err(bad("too short"));
    }
    let (body, crc) = token.split_at(token.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(bad("checksum mismatch (truncated or altered)"));
    }
    if body[0] != FORMAT || body[1] != kind as u8 {
        return Err(bad("it belongs to another kind of request"));
    }
    if body[2..6] != identity.to_be_bytes() {
        return Err(bad(
            "it belongs to a request with other arguments (table, key, range, point or partition)",
        ));
    }
    let (v, n) = bincode::serde::decode_from_slice(&body[6..], bincode::config::standard())
        .map_err(|_| bad("undecodable"))?;
    if n != body.len() - 6 {
        return Err(bad("trailing bytes"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_requests() {
        let t = seal(Kind::Scan, 7, &(3u64, vec![1u8, 2])).unwrap();
        assert_eq!(
            open::<(u64, Vec<u8>)>(Kind::Scan, 7, &t).unwrap(),
            (3, vec![1, 2])
        );
        assert!(
            open::<(u64, Vec<u8>)>(Kind::Scan, 8, &t).is_err(),
            "other request"
        );
        assert!(
            open::<(u64, Vec<u8>)>(Kind::Diff, 7, &t).is_err(),
            "other kind"
        );
        let mut bad = t.clone();
        bad[7] ^= 1;
        assert!(
            open::<(u64, Vec<u8>)>(Kind::Scan, 7, &bad).is_err(),
            "tampered"
        );
        assert!(
            open::<(u64, Vec<u8>)>(Kind::Scan, 7, &t[..5]).is_err(),
            "truncated"
        );
    }
}
