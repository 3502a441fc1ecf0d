//! Strata's wire protocol: the `strata.v1` protobuf package, with its
//! messages, tonic clients and tonic servers.
//!
//! Two services, defined in `proto/strata/v1/`:
//! - `Query` (`query.proto`): `Get`, `History`, `Scan`, `Diff`,
//!   `Subscribe`, `ListTables`, `DescribeTable`.
//! - `Admin` (`admin.proto`): `Rewind`.
//!
//! Shared vocabulary (points in history, key filters, entries, routing
//! options, who served a read) lives in `common.proto`, whose opening
//! comment is the reference for the conventions every RPC follows: versions
//! are per partition, times are milliseconds since the Unix epoch, keys and
//! values travel both as codec bytes and as JSON, the error-to-status
//! mapping, and how deadlines carry across forwarded hops.
//!
//! The code is generated at build time from the `.proto` files by protox
//! and tonic-prost-build, with no system `protoc`. [`FILE_DESCRIPTOR_SET`]
//! holds the encoded descriptors (comments included) for gRPC server
//! reflection, so `grpcurl` works without the `.proto` files.
//!
//! This crate is the bottom of the dependency graph: it knows nothing of
//! tables or Kafka. Conversions to and from the `state` crate's types live
//! with the server.
//!
//! ```
//! use prost::Message;
//! use strata_proto::v1::{At, GetRequest, RequestOptions, at, get_request};
//!
//! // "The value of key \"alice\" in table balances as of 1 May 2024, 12:00 UTC,
//! // accepting a stale answer."
//! let req = GetRequest {
//!     table: "balances".into(),
//!     key_ref: Some(get_request::KeyRef::KeyJson(r#""alice""#.into())),
//!     at: Some(At { point: Some(at::Point::TimeMs(1_714_564_800_000)) }),
//!     options: Some(RequestOptions { allow_stale: true, ..Default::default() }),
//!     // Unset: the server finds the key's partition.
//!     partition: None,
//! };
//! let bytes = req.encode_to_vec();
//! assert_eq!(GetRequest::decode(bytes.as_slice())?, req);
//! # Ok::<(), prost::DecodeError>(())
//! ```

#![warn(missing_docs)]

/// The `strata.v1` package: messages at the top, and per service a
/// `*_client` module (`QueryClient`, `AdminClient`) and a `*_server` module
/// (the `Query`/`Admin` traits to implement, and `QueryServer`/`AdminServer`
/// to mount on a tonic router).
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded `FileDescriptorSet` of every file of `strata.v1`, with
/// source info (comments), for gRPC server reflection (register it with
/// `tonic_reflection`'s `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strata_v1_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::FILE_DESCRIPTOR_SET;
    use super::v1::*;

    #[test]
    fn get_request_round_trips() {
        let req = GetRequest {
            table: "balances".into(),
            key_ref: Some(get_request::KeyRef::Key(b"alice".to_vec())),
            // Version 0 is a real point (the empty partition): the oneof
            // must keep it distinct from "unset".
            at: Some(At {
                point: Some(at::Point::Version(0)),
            }),
            options: Some(RequestOptions {
                allow_stale: true,
                max_hops: 2,
                hops: 1,
                representation: Representation::Json as i32,
            }),
            // Proto3 `optional`: 0 is a real partition, distinct from unset.
            partition: Some(0),
        };
        let decoded = GetRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, req);
        assert_eq!(decoded.at.unwrap().point, Some(at::Point::Version(0)));
        assert_eq!(
            decoded.options.unwrap().representation(),
            Representation::Json
        );

        // An empty message decodes to "no key, latest, default options".
        let empty = GetRequest::decode(&[][..]).unwrap();
        assert_eq!(empty.key_ref, None);
        assert_eq!(empty.at, None);
    }

    #[test]
    fn change_round_trips() {
        let change = Change {
            partition: 3,
            key: b"\x00\x01".to_vec(),
            key_json: "1".into(),
            entry: Some(Entry {
                version: 42,
                time_ms: 1_714_564_800_000,
                flags: Some(Flags {
                    rewind: true,
                    replay: false,
                }),
                lineage: None,
                deleted: true,
                value: Vec::new(),
                value_json: String::new(),
            }),
        };
        let decoded = Change::decode(change.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, change);

        let resp = SubscribeResponse {
            changes: vec![
                change.clone(),
                Change {
                    partition: 0,
                    ..change
                },
            ],
            resume: Some(Cursor {
                positions: vec![
                    PartitionVersion {
                        partition: 0,
                        version: 42,
                    },
                    PartitionVersion {
                        partition: 3,
                        version: 42,
                    },
                ],
            }),
            caught_up: true,
        };
        assert_eq!(
            SubscribeResponse::decode(resp.encode_to_vec().as_slice()).unwrap(),
            resp
        );
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        // A length-delimited field (table, tag 1) claiming more bytes than
        // there are.
        assert!(GetRequest::decode(&[0x0A, 0x10, b'x'][..]).is_err());
    }

    #[test]
    fn descriptor_set_lists_both_services_and_every_rpc() {
        let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let mut services = Vec::new();
        for file in &fds.file {
            assert_eq!(file.package(), "strata.v1", "{}", file.name());
            // Comments travel to reflection clients.
            assert!(
                file.source_code_info
                    .as_ref()
                    .is_some_and(|s| !s.location.is_empty()),
                "{}",
                file.name()
            );
            for s in &file.service {
                let methods: Vec<(&str, bool)> = s
                    .method
                    .iter()
                    .map(|m| (m.name(), m.server_streaming()))
                    .collect();
                services.push((format!("{}.{}", file.package(), s.name()), methods));
            }
        }
        services.sort();
        let query = [
            ("Get", false),
            ("History", false),
            ("Scan", false),
            ("Diff", false),
            ("Subscribe", true),
            ("ListTables", false),
            ("DescribeTable", false),
        ];
        assert_eq!(
            services,
            vec![
                (
                    "strata.v1.Admin".to_string(),
                    vec![("Rewind", false), ("CancelReplay", false)]
                ),
                ("strata.v1.Query".to_string(), query.to_vec()),
            ]
        );
        // The names reflection offers are the ones the generated servers
        // answer to.
        assert_eq!(query_server::SERVICE_NAME, "strata.v1.Query");
        assert_eq!(admin_server::SERVICE_NAME, "strata.v1.Admin");
    }
}
