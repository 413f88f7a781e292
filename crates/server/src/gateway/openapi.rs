//! The gateway's OpenAPI 3 document, made from the same descriptors as its
//! routes: every annotated unary RPC as an operation (its `.proto` comment
//! as the description), its request as a JSON body (POST) or query
//! parameters (GET), its response and every message they reach as schemas
//! in the protobuf JSON mapping, and the refusal body. The insight stream
//! is described in prose: an event stream has no schema here.

use std::collections::BTreeMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::Route;

/// The document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    let mut paths = serde_json::Map::new();
    for route in routes.iter().filter(|r| !r.streaming) {
        let description = comments(&route.method_descriptor);
        let mut operation = json!({
            "operationId": route.method_descriptor.name(),
            "summary": format!("{} ({})", route.method_descriptor.name(), route.rpc),
            "description": description,
            "responses": {
                "200": {
                    "description": "The RPC's answer.",
                    "content": {"application/json": {"schema": reference(&route.output, &mut schemas)}},
                },
                "default": {
                    "description": "A refusal: the gRPC code's name and a message naming the field, with the HTTP status of the code.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}},
                },
            },
        });
        if route.method == http::Method::GET {
            let parameters: Vec<Value> = route
                .input
                .fields()
                .filter(|f| !f.is_map() && !matches!(f.kind(), Kind::Message(_)))
                .map(|f| {
                    json!({
                        "name": f.name(),
                        "in": "query",
                        "required": false,
                        "description": comments_at(&f),
                        "schema": field_schema(&f, &mut schemas),
                        "explode": true,
                    })
                })
                .collect();
            operation["parameters"] = Value::Array(parameters);
        } else {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": reference(&route.input, &mut schemas)}},
            });
        }
        let method = route.method.as_str().to_ascii_lowercase();
        let item = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        item[method] = operation;
    }
    schemas.insert(
        "Refusal".into(),
        json!({
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The gRPC code's name, e.g. INVALID_ARGUMENT."},
                "message": {"type": "string", "description": "What was wrong, naming the field."},
            },
            "required": ["code", "message"],
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Learning Hub JSON gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The design's REST paths, each served by the gRPC method the .proto annotates with google.api.http, through the same authentication, validation, rate limit and audit. Callers present their client certificate (mutual TLS) and, as instances, their API key as a bearer token. GET /api/v1/hub/insights?new=true follows the insight stream as Server-Sent Events (id: the insight's sequence; Last-Event-ID resumes).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    })
}

/// A `$ref` to `message`'s schema, adding it (and what it reaches).
fn reference(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    let name = message.full_name().to_string();
    if let Some(special) = well_known(&name) {
        return special;
    }
    if !schemas.contains_key(&name) {
        // Placed first so that recursion ends.
        schemas.insert(name.clone(), json!({}));
        let mut properties = serde_json::Map::new();
        for field in message.fields() {
            let mut schema = field_schema(&field, schemas);
            let doc = comments_at(&field);
            if !doc.is_empty()
                && let Value::Object(map) = &mut schema
                && !map.contains_key("$ref")
            {
                map.insert("description".into(), Value::String(doc));
            }
            properties.insert(field.json_name().to_string(), schema);
        }
        let schema = json!({
            "type": "object",
            "description": comments_of(message.parent_file_descriptor_proto(), message.path()),
            "properties": properties,
        });
        schemas.insert(name.clone(), schema);
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Schemas of the well-known types, as the JSON mapping writes them.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        _ => return None,
    })
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
        && let Some(value) = entry.get_field_by_name("value")
    {
        return json!({"type": "object", "additionalProperties": kind_schema(&value.kind(), schemas)});
    }
    let item = kind_schema(&field.kind(), schemas);
    match field.cardinality() {
        Cardinality::Repeated => json!({"type": "array", "items": item}),
        _ => item,
    }
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // 64-bit integers are strings in the JSON mapping.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "pattern": "^-?[0-9]+$"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "pattern": "^[0-9]+$"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => json!({
            "type": "string",
            "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>(),
        }),
        Kind::Message(m) => reference(m, schemas),
    }
}

fn comments(method: &prost_reflect::MethodDescriptor) -> String {
    comments_of(method.parent_file().file_descriptor_proto(), method.path())
}

fn comments_at(field: &FieldDescriptor) -> String {
    comments_of(field.parent_file().file_descriptor_proto(), field.path())
}

/// The leading (else trailing) comment at `path` of `file`, one line.
fn comments_of(file: &prost_types::FileDescriptorProto, path: &[i32]) -> String {
    let Some(info) = &file.source_code_info else {
        return String::new();
    };
    info.location
        .iter()
        .find(|l| l.path == path)
        .map(|l| {
            let text = if l.leading_comments().trim().is_empty() {
                l.trailing_comments()
            } else {
                l.leading_comments()
            };
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}
