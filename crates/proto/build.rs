//! Compiles the contract in `proto/` (at the repository's top) without a
//! system `protoc`: protox parses the files into a descriptor set, which
//! feeds tonic's code generator and, encoded, the gRPC reflection service
//! (with source info, so `grpcurl describe` shows the docs).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(["learninghub/v1/hub.proto"])?;

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
        // (crates/proto/src/codec.rs), not INTERNAL.
        .codec_path("crate::codec::HubCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
