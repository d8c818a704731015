//! Process harness for end-to-end tests: the real `signer-gateway` binary in a temp dir
//! ([`Gateway`]), `test-signer` processes ([`TestSignerProcess`]), an HTTP client
//! ([`Client`]), polling with deadlines ([`eventually`]) and payload builders.
//!
//! Everything binds loopback port 0 and reads the real addresses from the processes' ready
//! lines, so tests run in parallel without port clashes. `E2E_VERBOSE=1` shows the children's
//! output; otherwise the gateway's stderr goes to `<dir>/gateway.log` ([`Gateway::log`]),
//! whose tail is printed when a test panics.

mod bins;
mod client;
mod gateway;
mod payloads;
mod poll;
mod process;
mod signer_process;

pub use bins::{test_signer_bin, workspace_bin};
pub use client::{Client, Reply, DEFAULT_TIMEOUT};
pub use gateway::{gateway_bin, parse_ready_line, EtcdWatermark, Gateway, GatewayConfig, READY_PREFIX, READY_TIMEOUT};
pub use payloads::{
    attestation, block, block_from_vector, bls_attestation, bls_preattestation, generic_operation, preattestation,
    vector, ConsensusOp, TEST_CHAIN, VECTORS_PATH,
};
pub use poll::{eventually, within, POLL_INTERVAL};
pub use process::{signal, verbose, Lines, Proc, Run, Stderr};
pub use signer_process::{SignerControl, TestSignerProcess};

/// Assert that `body` is an octez error trace: a non-empty JSON array of objects, each with a
/// string `id` (and usually `kind` and `msg`).
pub fn assert_error_trace(body: &serde_json::Value) -> anyhow::Result<()> {
    let items = body
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("error body is not a JSON array: {body}"))?;
    anyhow::ensure!(!items.is_empty(), "error trace is empty: {body}");
    for item in items {
        anyhow::ensure!(item.is_object(), "error trace item is not an object: {body}");
        anyhow::ensure!(item["id"].is_string(), "error trace item without a string id: {body}");
    }
    Ok(())
}

/// Skip a test whose tool is missing: loudly on a developer's machine, and as a failure under
/// CI (`CI` set), where `scripts/install-deps.sh` must have installed every tool a test needs,
/// so that a missing package can never turn into a green run that tested less.
pub fn skip_unless_ci(test: &str, why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{test} cannot run under CI: {why} (scripts/install-deps.sh should have installed it)");
    }
    let bar = "!".repeat(80);
    eprintln!("\n{bar}\n!! SKIPPED {test}: {why}\n{bar}\n");
}
