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

#[test]
fn a_bad_replicas_entry_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let cases = [
        // No top-level pin and none for the second replica.
        (
            "replicas: [{name: a, addresses: ['a:1'], host_key: 'SHA256:x'}, {name: b, addresses: ['b:1']}]\n",
            "replicas[1].host_key",
        ),
        // One gateway or several, not both.
        (
            "gateways: ['g:1']\nreplicas: [{name: a, addresses: ['a:1']}]\nhost_key: 'SHA256:x'\n",
            "replicas",
        ),
    ];
    for (text, field) in cases {
        std::fs::write(&config, format!("{text}identity: /k\n")).unwrap();
        let out = check(&config);
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{field} not named: {stderr}");
    }
}

/// `check` goes through every replica's addresses, says which replica each belongs to, and
/// exits 1 when one fails (here: listeners that are not SSH servers close every connection).
#[test]
fn check_tries_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let out = Command::new(BIN).args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let (a, b1, b2) = (closing("127.0.0.1"), closing("127.0.0.2"), closing("127.0.0.3"));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "replicas:\n  - {{name: gw-a, addresses: ['{a}']}}\n  - {{name: gw-b, addresses: ['{b1}', '{b2}']}}\n\
             host_key: 'SHA256:x'\nidentity: '{}'\nsigner: '{a}'\nconnect_timeout: 2s\n",
            key.display()
        ),
    )
    .unwrap();
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("==") || l.starts_with("--"))
        .collect();
    assert_eq!(
        steps,
        [
            "==   replica gw-a".to_string(),
            format!("--   gateway {a} via uplink default"),
            "==   replica gw-b".to_string(),
            format!("--   gateway {b1} via uplink default"),
            format!("--   gateway {b2} via uplink default"),
        ],
        "{stdout}"
    );
    assert_eq!(stdout.matches("FAIL ssh").count(), 3, "{stdout}");
    assert!(stdout.contains("some checks failed"), "{stdout}");
}

/// A listener on `ip`, port 0, that closes every connection at once.
fn closing(ip: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    addr
}

/// `signer-tunnel --config CONFIG check`.
fn check(config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .unwrap()
}
