//! Interop: Taquito's `RemoteSigner` (a third-party client) against the gateway, under a path
//! prefix. Taquito fetches the public key, checks it hashes to the pkh, and verifies the
//! signature; `tests/taquito/sign.mjs` verifies once more, and so do we, in Rust. For tz4,
//! the signer sits behind a real tunnel (`signer-tunnel`), as a Pi signer does, and Taquito 25
//! verifies the BLS signatures (`RemoteSigner` 21, the newest, cannot decode `BLsig`, so
//! `sign.mjs` makes its HTTP calls through `RemoteSigner`'s own client and verifies with
//! `@taquito/utils` 25: see `sign.mjs`).
//!
//! Needs Node.js (`node` on PATH; set `SKIP_NODE_TESTS=1` to skip loudly) and the npm
//! packages in `tests/taquito/node_modules` (installed here with `npm ci` when missing), and
//! the `signer-gateway` binary (`cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use signer_gateway::tezos::PublicKey;
use testkit::harness::{
    attestation, block, bls_attestation, bls_preattestation, generic_operation, Gateway, GatewayConfig,
    TestSignerProcess, TEST_CHAIN,
};
use testkit::ssh_client::SshKey;
use testkit::test_signer::{bls_key_from_seed, seed, Mode};
use testkit::tunnel_harness::{TunnelClient, TunnelConfig};
use tokio::process::Command;

fn taquito_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/taquito")
}

/// `Some(version)` if node runs; `None` if the test must be skipped; panics otherwise.
async fn node_or_skip() -> Option<String> {
    let out = Command::new("node").arg("--version").output().await;
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        _ if std::env::var("SKIP_NODE_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("\n**************************************************************");
            eprintln!("* SKIPPED: Taquito interop test (SKIP_NODE_TESTS=1, no node) *");
            eprintln!("**************************************************************\n");
            None
        }
        _ => panic!("node not found: install Node.js to run the Taquito interop test (or set SKIP_NODE_TESTS=1)"),
    }
}

/// Run `npm ci` once if `node_modules` is missing.
async fn ensure_node_modules() {
    let dir = taquito_dir();
    if ["remote-signer", "signer", "utils"]
        .iter()
        .all(|p| dir.join("node_modules/@taquito").join(p).is_dir())
    {
        return;
    }
    eprintln!("tests/taquito/node_modules missing: running `npm ci` (needs the npm registry)");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("npm ci did not finish within 180 s")
    .expect("npm not found: install npm, or run `npm ci` in tests/taquito");
    assert!(
        out.status.success(),
        "`npm ci` in {} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `node sign.mjs <base> <pkh> <hex>`: exit success and the JSON line it printed.
async fn taquito_sign(base: &str, pkh: &str, bytes: &[u8]) -> (bool, Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("node")
            .arg("sign.mjs")
            .args([base, pkh, &hex::encode(bytes)])
            .current_dir(taquito_dir())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("sign.mjs did not finish within 30 s")
    .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "sign.mjs printed no JSON line ({e}); status {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taquito_remote_signer_signs_through_the_gateway() {
    let Some(version) = node_or_skip().await else {
        return;
    };
    eprintln!("node {version}");
    ensure_node_modules().await;

    let signer = TestSignerProcess::start(&[seed(11), seed(12)], Mode::Ok).await.unwrap();
    let (generic_ok, generic_no) = (signer.pkhs()[0], signer.pkhs()[1]);
    let mut cfg = GatewayConfig::new(&[("primary", signer.addr())]);
    cfg.path_prefix = "/signer".into();
    cfg.policy_keys = format!("{{ {generic_ok}: {{ allow_generic: true }} }}");
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let base = gw.api_url("/signer");
    let keys = signer.keys();

    let cases: [(&str, _, Vec<u8>); 3] = [
        ("attestation", generic_ok, attestation(TEST_CHAIN, 100, 0, 1)),
        (
            "generic operation (allowed for this key)",
            generic_ok,
            generic_operation(1),
        ),
        (
            "attestation, second key",
            generic_no,
            attestation(TEST_CHAIN, 100, 0, 1),
        ),
    ];
    for (case, pkh, bytes) in cases {
        let (ok, out) = taquito_sign(&base, &pkh.to_string(), &bytes).await;
        assert!(ok && out["ok"] == true, "{case}: {out}");
        assert_eq!(out["pkh"], pkh.to_string(), "{case}");
        let pk: PublicKey = out["public_key"].as_str().unwrap().parse().unwrap();
        let key = keys.iter().find(|k| k.pkh() == pkh).unwrap();
        assert_eq!(&pk, key.public_key(), "{case}");
        let sig = out["signature"].as_str().unwrap();
        assert!(sig.starts_with("edsig"), "{case}: {sig}");
        pk.verify(&bytes, sig)
            .unwrap_or_else(|e| panic!("{case}: signature does not verify in Rust: {e}"));
    }

    // Refusals reach Taquito as HTTP errors: a double attestation (409), a generic operation
    // for a key that may not sign them (403).
    let (ok, out) = taquito_sign(&base, &generic_ok.to_string(), &attestation(TEST_CHAIN, 100, 0, 2)).await;
    assert!(!ok && out["ok"] == false, "double attestation must fail: {out}");
    assert_eq!(out["status"], 409, "{out}");
    let (ok, out) = taquito_sign(&base, &generic_no.to_string(), &generic_operation(2)).await;
    assert!(!ok && out["ok"] == false, "generic op must be refused: {out}");
    assert_eq!(out["status"], 403, "{out}");
}

/// tz4 blocks, preattestations and attestations signed by a tz4 test signer behind a
/// `signer-tunnel` reverse tunnel, asked for and verified by Taquito.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taquito_signs_tz4_through_a_tunnel() {
    if node_or_skip().await.is_none() {
        return;
    }
    ensure_node_modules().await;
    let dir = tempfile::Builder::new().prefix("taquito-tz4-").tempdir().unwrap();
    let key = SshKey::generate(dir.path(), "pi_ed25519").unwrap();
    let bls = bls_key_from_seed(44);
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let pi = TestSignerProcess::start_keys(any, std::slice::from_ref(&bls), Mode::Ok)
        .await
        .unwrap();
    let yaml = format!(
        r#"api: {{listen: 127.0.0.1:0, path_prefix: /signer}}
admin: {{listen: 127.0.0.1:0}}
watermark: {{backend: file, dir: "{{dir}}/watermarks", create_if_missing: true}}
ssh: {{listen: 127.0.0.1:0, host_key: "{{dir}}/ssh_host_ed25519_key"}}
signers:
  - name: pi
    tunnel: {{keys: ["{}"]}}
health_check: {{interval: 200ms, timeout: 500ms, rise: 1, fall: 1}}
log_format: text
"#,
        key.public
    );
    let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    let (ssh, host_key) = gw.ssh_endpoint().unwrap();
    let _tunnel = TunnelClient::start(dir.path(), &TunnelConfig::new(ssh, &host_key, &key.private, pi.addr())).unwrap();
    gw.wait_signers_up(&["pi"], Duration::from_secs(20)).await.unwrap();
    let base = gw.api_url("/signer");
    let pkh = bls.pkh().to_string();
    let cases = [
        ("block", block(TEST_CHAIN, 200, 0, 1).unwrap()),
        ("preattestation (tag 40)", bls_preattestation(TEST_CHAIN, 200, 0, 1)),
        ("attestation (tag 41)", bls_attestation(TEST_CHAIN, 200, 0, 1)),
    ];
    for (case, bytes) in cases {
        let (ok, out) = taquito_sign(&base, &pkh, &bytes).await;
        assert!(ok && out["ok"] == true, "{case}: {out}");
        assert_eq!(out["pkh"], pkh, "{case}");
        assert_eq!(out["public_key"], bls.public_key().to_string(), "{case}");
        let sig = out["signature"].as_str().unwrap();
        assert!(sig.starts_with("BLsig"), "{case}: {sig}");
        bls.public_key()
            .verify(&bytes, sig)
            .unwrap_or_else(|e| panic!("{case}: signature does not verify in Rust: {e}"));
    }
    assert_eq!(pi.stats().await.unwrap().signs, 3, "all three went through the tunnel");
    // A double attestation reaches Taquito as a 409.
    let (ok, out) = taquito_sign(&base, &pkh, &bls_attestation(TEST_CHAIN, 200, 0, 2)).await;
    assert!(!ok && out["status"] == 409, "{out}");
}

/// The gateway verifies tz2 (secp256k1) and tz3 (P-256) signatures with its own encodings:
/// Taquito must agree on the key, the key hash and the signature for both schemes (and reject
/// a signature over other bytes), so the gateway neither refuses good signatures nor accepts
/// bad ones from such signers.
#[tokio::test]
async fn taquito_agrees_on_secp256k1_and_p256_encodings() {
    use k256::ecdsa::signature::hazmat::PrehashSigner as _;
    use signer_gateway::tezos::{blake2b_256, encode_public_key, encode_signature, Curve};
    if node_or_skip().await.is_none() {
        return;
    }
    ensure_node_modules().await;
    let bytes = attestation(TEST_CHAIN, 1234, 1, 7);
    let digest = blake2b_256(&bytes);
    let k = k256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    let sig: k256::ecdsa::Signature = k.sign_prehash(&digest).unwrap();
    let sig = sig.normalize_s().unwrap_or(sig);
    let tz2 = (
        encode_public_key(Curve::Secp256k1, k.verifying_key().to_encoded_point(true).as_bytes()),
        encode_signature(Curve::Secp256k1, &sig.to_bytes().into()),
    );
    let p = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    let sig: p256::ecdsa::Signature = p.sign_prehash(&digest).unwrap();
    let tz3 = (
        encode_public_key(Curve::P256, p.verifying_key().to_encoded_point(true).as_bytes()),
        encode_signature(Curve::P256, &sig.to_bytes().into()),
    );
    for (pk_text, sig_text) in [tz2, tz3] {
        let pk: PublicKey = pk_text.parse().unwrap();
        pk.verify(&bytes, &sig_text).unwrap();
        let pkh = pk.hash().to_string();
        let run = |hex_bytes: String| {
            let (pk_text, sig_text, pkh) = (pk_text.clone(), sig_text.clone(), pkh.clone());
            async move {
                Command::new("node")
                    .arg("verify.mjs")
                    .args([hex_bytes, pk_text, sig_text, pkh])
                    .current_dir(taquito_dir())
                    .output()
                    .await
                    .expect("run node verify.mjs")
            }
        };
        let out = run(hex::encode(&bytes)).await;
        assert!(
            out.status.success(),
            "Taquito rejects {pk_text} / {sig_text}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut other = bytes.clone();
        other[60] ^= 1;
        let out = run(hex::encode(&other)).await;
        assert!(!out.status.success(), "Taquito accepts {sig_text} over other bytes");
    }
}
