//! The real demo binary, headless: every step of the flow is narrated.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn demo_runs_headless_and_prints_the_curl_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_asset-agent-demo"))
        .args(["--for", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("curl --unix-socket "), "{stdout}");
    assert!(stdout.contains("http://localhost/v1/token"), "{stdout}");
    for step in [
        "device key created",
        "access token obtained",
        "actor token minted",
        "registered a NEW Asset",
        "asset token issued and verified",
        "next refresh in",
    ] {
        assert!(stdout.contains(step), "missing step {step:?}: {stdout}");
    }
}

#[test]
fn demo_shows_a_gateway_with_children() {
    let out = Command::new(env!("CARGO_BIN_EXE_asset-agent-demo"))
        .args(["--for", "6", "--children", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gateway mode: 2 child assets"), "{stdout}");
    for child in ["child meter-1: asset token", "child meter-2: asset token"] {
        assert!(stdout.contains(child), "missing {child:?}: {stdout}");
    }
}
