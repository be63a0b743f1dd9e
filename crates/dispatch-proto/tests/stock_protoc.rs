//! The contract must compile with a stock `protoc` too: producers in other languages generate
//! their code from the same files. The vendored protoc binary is the upstream release.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn proto_files_compile_with_stock_protoc() {
    let protoc =
        protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this platform");
    let include = protoc_bin_vendored::include_path().expect("the well-known types");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = std::env::temp_dir().join(format!("dispatch-proto-{}.pb", std::process::id()));
    let output = Command::new(protoc)
        .arg(format!("-I{}", root.display()))
        .arg(format!("-I{}", include.display()))
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("posternity/events/v1/events.proto")
        .arg("posternity/dispatch/v1/dispatch.proto")
        .output()
        .expect("protoc runs");
    let _ = std::fs::remove_file(&out);
    assert!(
        output.status.success(),
        "protoc refused the contract:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
