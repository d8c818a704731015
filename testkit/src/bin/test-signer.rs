//! `test-signer`: an octez-compatible remote signer with real ed25519 and BLS keys and fault modes,
//! for end-to-end tests of signer-gateway. Never use its keys for anything real.
//!
//! Prints exactly one line on stdout, `test-signer listening on <addr> keys=<tz1…,…>` (followed
//! by ` control=<addr>` with `--control-listen`), then serves until SIGTERM or SIGINT.
//! `--protocol socket` speaks octez's socket protocol on `--listen` instead of HTTP; its control
//! endpoints are then reachable only on `--control-listen`. Control endpoints: see
//! `testkit::test_signer`.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use testkit::test_signer::{parse_bls_key, parse_seed, Mode, Protocol, TestKey, TestSigner, TestSignerOptions};
use tokio::signal::unix::{signal, SignalKind};

/// Test remote signer (octez protocol) with fault injection.
#[derive(Debug, Parser)]
#[command(name = "test-signer", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// What to speak on --listen: http, or socket (octez's binary signer protocol).
    #[arg(long, default_value = "http")]
    protocol: Protocol,
    /// Also serve the /_control/ endpoints (HTTP) on this address; port 0 picks a free port
    /// (printed on stdout as control=<addr>). The only way to control a socket signer.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// A key seed: 64 hex digits, an edsk… seed, or a small integer n for the seed [n; 32].
    /// Repeat for several keys.
    #[arg(long = "seed", value_parser = parse_seed, required_unless_present = "bls_keys")]
    seeds: Vec<[u8; 32]>,
    /// A tz4 (BLS) key: a BLsk… secret key, 64 hex digits of key-generation input, or a small
    /// integer n for the input [n; 32]. Repeat for several keys.
    #[arg(long = "bls-key", value_parser = parse_bls_key)]
    bls_keys: Vec<TestKey>,
    /// Initial fault mode: ok, slow:<ms>, fail, fail-sign, hang, wrong-sig, wrong-scheme, malformed-sig, bad-key, refuse,
    /// close-mid-answer, garbage.
    #[arg(long, default_value = "ok")]
    mode: Mode,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let handle = TestSigner::spawn(TestSignerOptions {
        listen: args.listen,
        protocol: args.protocol,
        control_listen: args.control_listen,
        seeds: args.seeds,
        keys: args.bls_keys,
        mode: args.mode,
    })
    .await
    .with_context(|| format!("binding {} (control: {:?})", args.listen, args.control_listen))?;
    let keys: Vec<String> = handle.pkhs().iter().map(ToString::to_string).collect();
    let control = handle
        .control_addr()
        .map(|addr| format!(" control={addr}"))
        .unwrap_or_default();
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "test-signer listening on {} keys={}{control}",
            handle.addr(),
            keys.join(",")
        )?;
        out.flush()?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
