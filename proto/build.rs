//! Compiles `shepherd/v1/*.proto` with protox (no system protoc): prost
//! messages, tonic clients and servers, serde impls that follow the protobuf
//! JSON mapping (pbjson), and the encoded descriptor set that gRPC server
//! reflection serves.

use std::error::Error;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shepherd/v1/policy.proto",
    "shepherd/v1/policy_service.proto",
    "shepherd/v1/agent.proto",
    "shepherd/v1/rollout.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;

    // Reflection needs the imported well-known types too, so grpcurl can
    // resolve google.protobuf.Duration and Timestamp.
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    std::fs::write(out_dir.join("shepherd_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients are made from a Channel; this also frees the name
        // `connect` for AgentService.Connect.
        .build_transport(false)
        .btree_map(".")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(compiler.file_descriptor_set())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .preserve_proto_field_names()
        .build(&[".shepherd.v1"])?;
    Ok(())
}
