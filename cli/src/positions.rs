//! Per-partition versions on the command line: `--expect-latest 0:12,2:40`
//! and change-feed cursors (`--after`), which are printed and read back as
//! JSON: `[{"partition":0,"version":12},{"partition":1,"version":40}]` (an
//! object `{"0":12,"1":40}` is accepted too).

use serde_json::{Value, json};
use strata_proto::v1 as pb;

/// Parses one `P:V`.
pub fn parse_partition_version(pv: &str) -> Result<pb::PartitionVersion, String> {
    let (p, v) = pv
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("`{pv}` is not PARTITION:VERSION (e.g. 2:57)"))?;
    Ok(pb::PartitionVersion {
        partition: p
            .parse()
            .map_err(|e| format!("partition `{p}` in `{pv}`: {e}"))?,
        version: v
            .parse()
            .map_err(|e| format!("version `{v}` in `{pv}`: {e}"))?,
    })
}

/// Formats versions as `P:V,P:V` (what `--expect-latest` reads).
pub fn format_partition_versions(pvs: &[pb::PartitionVersion]) -> String {
    pvs.iter()
        .map(|pv| format!("{}:{}", pv.partition, pv.version))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cursor as JSON, in the form `--after` reads.
pub fn cursor_json(c: &pb::Cursor) -> Value {
    Value::Array(
        c.positions
            .iter()
            .map(|p| json!({"partition": p.partition, "version": p.version}))
            .collect(),
    )
}

/// Parses a cursor from its JSON form (array of objects, or an object from
/// partition to version).
pub fn parse_cursor(s: &str) -> Result<pb::Cursor, String> {
    let bad = |why: &str| {
        format!(
            "`{s}` is not a cursor ({why}): pass the JSON the last `tail` printed, \
             e.g. '[{{\"partition\":0,\"version\":12}}]'"
        )
    };
    let v: Value = serde_json::from_str(s).map_err(|e| bad(&e.to_string()))?;
    let mut positions = match v {
        Value::Array(items) => items
            .iter()
            .map(|it| {
                let p = it.get("partition").and_then(Value::as_u64);
                let v = it.get("version").and_then(Value::as_u64);
                match (p.and_then(|p| u32::try_from(p).ok()), v) {
                    (Some(partition), Some(version)) => {
                        Ok(pb::PartitionVersion { partition, version })
                    }
                    _ => Err(bad("each item needs a numeric partition and version")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Object(map) => map
            .iter()
            .map(|(p, v)| match (p.parse::<u32>(), v.as_u64()) {
                (Ok(partition), Some(version)) => Ok(pb::PartitionVersion { partition, version }),
                _ => Err(bad("keys are partitions, values versions")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad("not an array or object")),
    };
    positions.sort_by_key(|p| p.partition);
    Ok(pb::Cursor { positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_versions_round_trip() {
        let pvs = vec![
            parse_partition_version("0:12").unwrap(),
            parse_partition_version(" 2:57").unwrap(),
        ];
        assert_eq!((pvs[1].partition, pvs[1].version), (2, 57));
        assert_eq!(format_partition_versions(&pvs), "0:12,2:57");
        assert!(parse_partition_version("0=12").is_err());
        assert!(parse_partition_version("x:1").is_err());
    }

    #[test]
    fn cursors_round_trip() {
        let c = parse_cursor(r#"{"1":40,"0":12}"#).unwrap();
        let printed = cursor_json(&c).to_string();
        assert_eq!(
            printed,
            r#"[{"partition":0,"version":12},{"partition":1,"version":40}]"#
        );
        assert_eq!(parse_cursor(&printed).unwrap(), c);
        assert!(parse_cursor("[1,2]").is_err());
        assert!(parse_cursor("nope").is_err());
    }
}
