//! Generates the Rust types and their proto3 JSON (serde) impls from `proto/` at build time.
//! protox compiles the files in pure Rust, so building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "posternity/events/v1/events.proto",
    "posternity/dispatch/v1/dispatch.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(FILES, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_bytes = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("descriptors.bin"), &descriptor_bytes)?;

    prost_build::Config::new()
        // The one well-known type we use is our own: pbjson-types' Timestamp writes `+00:00`
        // where the proto3 JSON mapping says `Z` (see src/timestamp.rs).
        .compile_well_known_types()
        .extern_path(".google.protobuf.Timestamp", "crate::wkt::Timestamp")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // Receivers get snake_case field names, the same style as the envelope around them.
        // Parsing accepts both snake_case and lowerCamelCase, as proto3 JSON requires.
        .preserve_proto_field_names()
        // Every field is present in the JSON, even at its default value, so receivers see one
        // stable shape per event type.
        .emit_fields()
        .build(&[".posternity"])?;
    Ok(())
}
