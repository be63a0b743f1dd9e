//! `dispatchd receiver`, the development endpoint: a request signed with one of its secrets is
//! answered with the configured status and printed as verified; anything else gets 401.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use dispatch_core::signing::{self, SigningSecret};
use dispatch_e2e::{KillOnDrop, free_port, try_http};

const BODY: &[u8] = br#"{"id":"evt_1","type":"webhook.test","data":{}}"#;

/// POSTs `BODY` signed with `secret`, retrying while the receiver is still starting.
async fn post_signed(port: u16, secret: &SigningSecret) -> u16 {
    let timestamp = signing::unix_seconds(SystemTime::now());
    let signature = secret.sign("evt_1", timestamp, BODY);
    let timestamp = timestamp.to_string();
    let headers = [
        ("content-type", "application/json"),
        ("webhook-id", "evt_1"),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
        ("posternity-attempt", "1"),
    ];
    for _ in 0..100 {
        if let Some((status, _)) = try_http(port, "POST", "/hook", &headers, BODY).await {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the receiver never answered on port {port}");
}

#[tokio::test]
async fn verifies_with_any_given_secret_and_answers_as_told() {
    let first = SigningSecret::generate(&mut rand::rng());
    let second = SigningSecret::generate(&mut rand::rng());
    let stranger = SigningSecret::generate(&mut rand::rng());
    let port = free_port();
    let out = tempfile_path("receiver-out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["receiver", "--port", &port.to_string(), "--status", "503"])
        .args(["--secret", first.as_str(), "--secret", second.as_str()])
        .env_remove("DISPATCH_CONFIG")
        .stdout(std::fs::File::create(&out).expect("output file"))
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("dispatchd receiver starts");

    assert_eq!(
        post_signed(port, &second).await,
        503,
        "verified, answered as told"
    );
    assert_eq!(post_signed(port, &first).await, 503);
    assert_eq!(post_signed(port, &stranger).await, 401, "wrong secret");
    child.kill().expect("stop");
    child.wait().expect("reaped");

    let printed = std::fs::read_to_string(&out).expect("output");
    assert!(
        printed.contains("verified with secret #2 -> 503"),
        "{printed}"
    );
    assert!(
        printed.contains("verified with secret #1 -> 503"),
        "{printed}"
    );
    assert!(printed.contains("NOT verified"), "{printed}");
    assert!(printed.contains("webhook-id=evt_1"), "{printed}");
    assert!(printed.contains(r#""type":"webhook.test""#), "{printed}");
    let _ = std::fs::remove_file(&out);
}

#[test]
fn a_malformed_secret_is_refused_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["receiver", "--port", "0", "--secret", "not-a-secret"])
        .env_remove("DISPATCH_CONFIG")
        .output()
        .expect("dispatchd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--secret #1"), "{stderr}");
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dispatchd-{name}-{}.txt", std::process::id()))
}
