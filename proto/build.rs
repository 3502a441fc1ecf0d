//! Compiles the protobuf definitions under `proto/` into Rust (messages,
//! tonic clients and servers) without a system `protoc`: protox parses and
//! links the files into a `FileDescriptorSet`, tonic-prost-build generates
//! code from that set, and the encoded set is kept in `OUT_DIR` so servers
//! can offer gRPC reflection.

use std::path::PathBuf;

/// The include root: imports and file names are relative to it.
const PROTO_ROOT: &str = "proto";

/// Every file of the `strata.v1` package, dependencies first.
const FILES: &[&str] = &[
    "strata/v1/common.proto",
    "strata/v1/query.proto",
    "strata/v1/admin.proto",
];

/// Where the encoded descriptor set goes, inside `OUT_DIR`.
const DESCRIPTOR_FILE: &str = "strata_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A directory makes cargo rerun when any file below it changes or
    // appears.
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    // Source info carries the comments: into rustdoc for the generated
    // code, and to reflection clients (`grpcurl describe`).
    compiler.include_source_info(true).include_imports(true);
    if let Err(e) = compiler.open_files(FILES) {
        // protox's Display is terse; its Debug names the file, line and
        // column.
        return Err(format!("compiling {PROTO_ROOT}/{FILES:?}: {e:?}").into());
    }

    std::fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
