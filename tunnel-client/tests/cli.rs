//! The `signer-tunnel` binary itself, with no gateway: its version, a refused config (exit 64
//! naming the field) and `keygen`. Being an integration test of this package, it also makes
//! `cargo test --workspace` build the binary the end-to-end tests run.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_signer-tunnel");

#[test]
fn version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("signer-tunnel "));
}

#[test]
fn a_config_with_an_unknown_field_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "gateways: ['gw:2222']\nhost_key: 'SHA256:x'\nidentity: /k\nsigner: '127.0.0.1:6732'\nno_such_field: 1\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_such_field"),
        "{out:?}"
    );
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_public_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .args(["--comment", "pi@test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssh-ed25519 "));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Never overwrites a key.
    let again = Command::new(BIN).args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success());
}
