//! Holds the contract to its promise of being the API reference: the
//! `.proto` is what users read (`grpcurl describe` shows its comments), so
//! the build fails if a service, RPC, message, field, enum or enum value in
//! `proto/` has no comment of its own, and names what is missing. (The
//! proto crate, `crates/proto`, generates the code from the same files.)

use std::path::Path;

use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};

// Field numbers in descriptor.proto: a source location's path is made of
// these and indexes.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new([Path::new("proto")])?;
    compiler.include_source_info(true).include_imports(false);
    compiler.open_files(["learninghub/v1/hub.proto"])?;

    let mut undocumented = Vec::new();
    for file in compiler.file_descriptor_set().file {
        let documented = |path: &[i32]| {
            file.source_code_info.as_ref().is_some_and(|info| {
                info.location.iter().any(|l| {
                    l.path == path
                        && (l.leading_comments().trim().len() > 1
                            || l.trailing_comments().trim().len() > 1)
                })
            })
        };
        let mut check = |path: Vec<i32>, what: String| {
            if !documented(&path) {
                undocumented.push(format!("{}: {what}", file.name()));
            }
        };
        // A method's request and response messages are documented by the
        // method; their fields still need their own comments.
        let rpc_messages: Vec<String> = file
            .service
            .iter()
            .flat_map(|s| s.method.iter())
            .flat_map(|m| [m.input_type(), m.output_type()])
            .filter_map(|t| t.rsplit('.').next())
            .map(str::to_string)
            .collect();
        walk_file(&file, &rpc_messages, &mut check);
    }
    if !undocumented.is_empty() {
        return Err(format!(
            "the .proto is the API reference; document these (a comment above each):\n  {}",
            undocumented.join("\n  ")
        )
        .into());
    }
    Ok(())
}

fn walk_file(
    file: &FileDescriptorProto,
    rpc_messages: &[String],
    check: &mut impl FnMut(Vec<i32>, String),
) {
    for (i, service) in file.service.iter().enumerate() {
        let path = vec![FILE_SERVICE, i as i32];
        check(path.clone(), format!("service {}", service.name()));
        for (j, method) in service.method.iter().enumerate() {
            let mut p = path.clone();
            p.extend([SERVICE_METHOD, j as i32]);
            check(p, format!("rpc {}.{}", service.name(), method.name()));
        }
    }
    for (i, message) in file.message_type.iter().enumerate() {
        let path = vec![FILE_MESSAGE, i as i32];
        if rpc_messages.iter().any(|m| m == message.name()) {
            // Documented by its RPC: check only what it holds.
            walk_members(message, path, message.name(), check);
        } else {
            walk_message(message, path, "", check);
        }
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        walk_enum(e, vec![FILE_ENUM, i as i32], "", check);
    }
}

fn walk_message(
    message: &DescriptorProto,
    path: Vec<i32>,
    scope: &str,
    check: &mut impl FnMut(Vec<i32>, String),
) {
    // Map fields' entry types are generated, not written.
    if message.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let name = format!("{scope}{}", message.name());
    check(path.clone(), format!("message {name}"));
    walk_members(message, path, &name, check);
}

fn walk_members(
    message: &DescriptorProto,
    path: Vec<i32>,
    name: &str,
    check: &mut impl FnMut(Vec<i32>, String),
) {
    for (j, field) in message.field.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_FIELD, j as i32]);
        check(p, format!("field {name}.{}", field.name()));
    }
    for (j, nested) in message.nested_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_NESTED, j as i32]);
        walk_message(nested, p, &format!("{name}."), check);
    }
    for (j, e) in message.enum_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([MESSAGE_ENUM, j as i32]);
        walk_enum(e, p, &format!("{name}."), check);
    }
}

fn walk_enum(
    e: &EnumDescriptorProto,
    path: Vec<i32>,
    scope: &str,
    check: &mut impl FnMut(Vec<i32>, String),
) {
    let name = format!("{scope}{}", e.name());
    check(path.clone(), format!("enum {name}"));
    for (j, value) in e.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([ENUM_VALUE, j as i32]);
        check(p, format!("enum value {name}.{}", value.name()));
    }
}
