//! Compiles `proto/` without a system `protoc`: protox parses the files into a
//! descriptor set, which feeds tonic's code generator and, encoded, the gRPC
//! reflection service (with source info, so `grpcurl describe` shows the docs).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/learninghub/v1/hub.proto"];
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(protos)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("learninghub_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Sorted maps: deterministic output and direct conversion to the
        // domain's BTreeMaps.
        .btree_map(".")
        // prost's codec, but undecodable requests are INVALID_ARGUMENT
        // (src/api/codec.rs), not INTERNAL.
        .codec_path("crate::api::codec::HubCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
