//! The shape of the hub's API, read once from the descriptor set the build
//! embeds: which RPC paths exist (with gRPC health and reflection), and for
//! each message which fields repeat and which hold messages.
//!
//! Two things need it before a handler runs. Metrics and the audit log
//! label calls by their RPC, and a label taken from the caller's request
//! path would let anyone mint new series and new stored strings by making
//! paths up: [`rpc_label`] maps every path onto the closed set of real
//! RPCs, and everything else onto [`UNKNOWN_RPC`]. And a request's size is
//! capped (4 MiB), but within that cap a map of 270 000 tiny entries costs
//! far more to decode than its bytes suggest, on threads every caller
//! shares: [`check_repeated`] counts the entries of every repeated field on
//! the wire, without allocating, and refuses a request with more than a
//! reader could ever accept before prost builds any of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use prost::Message;
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};

/// The label of a request path that is not one of the hub's RPCs.
pub const UNKNOWN_RPC: &str = "unknown";

/// The label of audit entries for connections refused before any call.
pub const CONNECTION: &str = "connection";

/// The most entries any validation rule accepts in a map or list (the
/// server's `validate::MAX_MAP_ENTRIES` and `MAX_LIST_ITEMS`).
pub const MAX_VALID_ENTRIES: usize = 32;

/// Entries a repeated or map field may have on the wire before a request is
/// refused undecoded: eight times [`MAX_VALID_ENTRIES`], so no request the
/// rules would accept is refused here.
pub const MAX_WIRE_ENTRIES: usize = 8 * MAX_VALID_ENTRIES;

/// How deep [`check_repeated`] follows nested messages (prost stops
/// decoding at 100; no request of ours nests beyond 6).
const MAX_DEPTH: usize = 32;

/// The RPCs the hub serves besides its own: gRPC health and reflection.
const STANDARD_RPCS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

struct Field {
    name: String,
    repeated: bool,
    /// The field's message type (fully qualified, with a leading dot).
    message: Option<String>,
}

struct Schema {
    /// Every RPC path, e.g. `/learninghub.v1.Hub/Register`.
    rpcs: BTreeSet<String>,
    /// The input types of the RPCs of `learninghub.*` services.
    requests: BTreeSet<String>,
    /// Fields by message (fully qualified name) and field number.
    messages: BTreeMap<String, BTreeMap<i32, Field>>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = Schema {
            rpcs: STANDARD_RPCS.iter().map(|p| p.to_string()).collect(),
            requests: BTreeSet::new(),
            messages: BTreeMap::new(),
        };
        for encoded in [crate::pb::FILE_DESCRIPTOR_SET] {
            // Written by the build from a valid set; a failure here would be
            // a build bug, and leaves the set empty rather than the hub down
            // (every other path is then `unknown`).
            let Ok(set) = FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in set.file {
                let package = file.package().to_string();
                for service in &file.service {
                    let ours = package.starts_with("learninghub.");
                    for method in &service.method {
                        schema.rpcs.insert(format!(
                            "/{package}.{}/{}",
                            service.name(),
                            method.name()
                        ));
                        if ours {
                            schema.requests.insert(method.input_type().to_string());
                        }
                    }
                }
                for message in &file.message_type {
                    collect(&mut schema.messages, &format!(".{package}"), message);
                }
            }
        }
        schema
    })
}

fn collect(into: &mut BTreeMap<String, BTreeMap<i32, Field>>, scope: &str, m: &DescriptorProto) {
    let name = format!("{scope}.{}", m.name());
    let fields = m
        .field
        .iter()
        .map(|f| {
            let field = Field {
                name: f.name().to_string(),
                repeated: f.label() == Label::Repeated,
                message: (f.r#type() == Type::Message).then(|| f.type_name().to_string()),
            };
            (f.number(), field)
        })
        .collect();
    for nested in &m.nested_type {
        collect(into, &name, nested);
    }
    into.insert(name, fields);
}

/// The RPC a request path names, from the closed set of real ones, or
/// [`UNKNOWN_RPC`].
pub fn rpc_label(path: &str) -> &'static str {
    schema().rpcs.get(path).map_or(UNKNOWN_RPC, String::as_str)
}

/// For a request of the hub's services named `message` (`RegisterRequest`,
/// in package `learninghub.v1`): an error naming the first repeated or map
/// field that has more than `max` entries on the wire in `bytes`, if any.
/// Messages that are not requests, and bytes that do not parse (prost then
/// says what is wrong with them), pass.
pub fn check_repeated(message: &str, bytes: &[u8], max: usize) -> Result<(), String> {
    let name = format!(".learninghub.v1.{message}");
    let schema = schema();
    if !schema.requests.contains(&name) {
        return Ok(());
    }
    walk(schema, &name, bytes, "", 0, max)
}

fn walk(
    schema: &Schema,
    message: &str,
    mut bytes: &[u8],
    path: &str,
    depth: usize,
    max: usize,
) -> Result<(), String> {
    let Some(fields) = schema.messages.get(message) else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    while !bytes.is_empty() {
        let Some(key) = varint(&mut bytes) else {
            return Ok(());
        };
        let Ok(number) = i32::try_from(key >> 3) else {
            return Ok(());
        };
        let field = fields.get(&number);
        let value = match key & 7 {
            0 => varint(&mut bytes).map(|_| &[][..]),
            1 => take(&mut bytes, 8),
            5 => take(&mut bytes, 4),
            2 => varint(&mut bytes)
                .and_then(|len| usize::try_from(len).ok())
                .and_then(|len| take(&mut bytes, len)),
            // Groups, or garbage: prost's to judge.
            _ => None,
        };
        let Some(value) = value else {
            return Ok(());
        };
        let Some(field) = field else { continue };
        if field.repeated {
            let count = counts.entry(number).or_insert(0);
            *count += 1;
            if *count > max {
                return Err(format!(
                    "{path}{}: more than {max} entries (a request may carry at most {})",
                    field.name, MAX_VALID_ENTRIES
                ));
            }
        }
        if let (Some(nested), 2) = (&field.message, key & 7) {
            let inner = format!("{path}{}.", field.name);
            walk(schema, nested, value, &inner, depth + 1, max)?;
        }
    }
    Ok(())
}

/// Reads a base-128 varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn labels_are_the_real_rpcs_or_unknown() {
        assert_eq!(
            rpc_label("/learninghub.v1.Hub/ShareStrategy"),
            "/learninghub.v1.Hub/ShareStrategy"
        );
        assert_eq!(
            rpc_label("/learninghub.v1.Admin/QueryAudit"),
            "/learninghub.v1.Admin/QueryAudit"
        );
        assert_eq!(
            rpc_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(rpc_label(STANDARD_RPCS[3]), STANDARD_RPCS[3]);
        for made_up in [
            "/learninghub.v1.Hub/Nope",
            "/x",
            "",
            "/learninghub.v1.Hub/ShareStrategy/",
        ] {
            assert_eq!(rpc_label(made_up), UNKNOWN_RPC, "{made_up:?}");
        }
        assert!(schema().rpcs.len() >= 25 + 2 + 2, "{}", schema().rpcs.len());
    }

    #[test]
    fn too_many_entries_are_found_on_the_wire_and_named() {
        let mut request = pb::ShareStrategyRequest {
            strategy: "s".into(),
            ..Default::default()
        };
        for i in 0..MAX_WIRE_ENTRIES {
            request.context.insert(format!("k{i}"), "v".into());
        }
        let bytes = request.encode_to_vec();
        assert_eq!(
            check_repeated("ShareStrategyRequest", &bytes, MAX_WIRE_ENTRIES),
            Ok(())
        );
        request.context.insert("one-more".into(), "v".into());
        let error = check_repeated(
            "ShareStrategyRequest",
            &request.encode_to_vec(),
            MAX_WIRE_ENTRIES,
        )
        .unwrap_err();
        assert!(
            error.starts_with("context: more than 256 entries"),
            "{error}"
        );

        // Nested: an insight's alternatives inside ShareInsightRequest.
        let insight = pb::Insight {
            alternatives: vec![pb::InsightAlternative::default(); 5],
            ..Default::default()
        };
        let request = pb::ShareInsightRequest {
            insight: Some(insight),
            ..Default::default()
        };
        let error = check_repeated("ShareInsightRequest", &request.encode_to_vec(), 4).unwrap_err();
        assert!(
            error.starts_with("insight.alternatives: more than 4"),
            "{error}"
        );

        // Responses are not checked (clients decode long lists), nor is
        // garbage, which prost then refuses with its own message.
        let response = pb::QueryAuditResponse {
            entries: vec![pb::AuditEntry::default(); 10],
        };
        assert_eq!(
            check_repeated("QueryAuditResponse", &response.encode_to_vec(), 4),
            Ok(())
        );
        assert_eq!(
            check_repeated("ShareStrategyRequest", &[0xff; 3], 4),
            Ok(())
        );
    }
}
