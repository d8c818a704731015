//! Hostile clients against the real gateway binary, one attack at a time, while a legitimate
//! baker signs every 200 ms on a new connection (as octez's baker does) from another source
//! address: slow bodies and slowloris (1,100 connections each, reopened as they are closed),
//! answers of the HTTP layer itself as JSON traces, a burst at one signer, an SSH banner flood
//! while a Pi (re)connects, and a watermark store removed while the gateway runs.
//!
//! Every attack is bounded in connections and time and stays on loopback. Needs the
//! `signer-gateway` binary (`cargo build --workspace --bins`) and OpenSSH's `ssh`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::harness::{
    assert_error_trace, attestation, eventually, generic_operation, Client, Gateway, GatewayConfig, TEST_CHAIN,
};
use testkit::ssh_client::{SshClient, SshKey, ALLOCATED};
use testkit::test_signer::{seed, Mode, TestSigner, TestSignerHandle, TestSignerOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// The attackers' source address; the baker connects from 127.0.0.1.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SETTLE: Duration = Duration::from_secs(15);

/// A TCP connection to `to` from `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// The gateway's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn signer() -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(31)],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A baker: one attestation every 200 ms, each on a new connection, until `stop`; returns
/// (sent, failed, slowest).
async fn baker(gw: SocketAddr, pkh: String, stop: Arc<AtomicBool>, from_level: i32) -> (u64, Vec<String>, Duration) {
    let client = Client::fresh_connections().with_timeout(Duration::from_secs(10));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut sent, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    let mut level = from_level;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        level += 1;
        sent += 1;
        let t = Instant::now();
        match client.sign(gw, "", &pkh, &attestation(TEST_CHAIN, level, 0, 1)).await {
            Ok((StatusCode::OK, _)) => {}
            Ok((status, body)) => failed.push(format!("level {level}: {status} {body}")),
            Err(e) => failed.push(format!("level {level}: {e:#}")),
        }
        slowest = slowest.max(t.elapsed());
    }
    (sent, failed, slowest)
}

/// One attacking connection, reopened whenever the gateway closes it, until `until`: sends
/// `head`, then `drip` one byte a second.
async fn attacker(gw: SocketAddr, head: Vec<u8>, drip: &'static [u8], until: Instant, opened: Arc<AtomicU64>) {
    while Instant::now() < until {
        let Ok(mut s) = connect_from(ATTACKER, gw).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if s.write_all(&head).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut buf = [0u8; 1024];
        'drip: for b in drip.iter().cycle() {
            if Instant::now() >= until {
                return;
            }
            // A second between bytes; a closed connection shows as a read of 0 or an error.
            let wait = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = wait {
                break 'drip;
            }
            if s.write_all(std::slice::from_ref(b)).await.is_err() {
                break 'drip;
            }
        }
        // Reopen, as an attacker would, without spinning.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// 1,100 attacking connections for 20 s while the baker signs: it loses nothing, and the
/// gateway's memory is back within 2x of its level before.
async fn flood(head: fn(&str) -> Vec<u8>, drip: &'static [u8]) {
    let signer = signer().await;
    let pkh = signer.pkhs()[0].to_string();
    let gw = Gateway::start(&GatewayConfig::new(&[("primary", signer.addr())]).to_yaml())
        .await
        .unwrap();
    gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    let pid = gw.pid().unwrap();
    // Warm up (the first signature fetches the key), then the memory before.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = tokio::spawn(baker(gw.api, pkh.clone(), Arc::clone(&stop), 0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, failed, _) = warm.await.unwrap();
    assert!(failed.is_empty(), "before the attack: {failed:?}");
    let before = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let bakes = tokio::spawn(baker(gw.api, pkh.clone(), Arc::clone(&stop), 1000));
    let until = Instant::now() + Duration::from_secs(20);
    let opened = Arc::new(AtomicU64::new(0));
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..1100 {
        attack.spawn(attacker(gw.api, head(&pkh), drip, until, Arc::clone(&opened)));
    }
    let mut peak = before;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(pid));
    }
    while attack.join_next().await.is_some() {}
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, slowest) = bakes.await.unwrap();
    // The attack's connections are gone once their deadlines passed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = rss_kib(pid);
    let refused = gw
        .metric("signer_gateway_http_refused_total", "reason", "per_source")
        .await
        .unwrap();
    eprintln!(
        "baker: {sent} signs, {} failed, slowest {slowest:?}; attacker opened {} connections, {refused} refused \
         per source; gateway RSS {before} KiB before, {peak} peak, {after} after",
        failed.len(),
        opened.load(Ordering::Relaxed)
    );
    assert!(sent >= 90, "the baker signed only {sent} times in 20 s");
    assert!(failed.is_empty(), "the baker lost signs: {failed:?}");
    assert!(
        after <= before * 2,
        "memory {after} KiB after the attack, {before} KiB before"
    );
    assert!(refused > 0.0, "the per-source cap never acted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_never_lock_out_the_baker() {
    flood(
        |pkh| format!("POST /keys/{pkh} HTTP/1.1\r\nhost: gw\r\ncontent-length: 500\r\n\r\n\"13").into_bytes(),
        b"0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_never_locks_out_the_baker() {
    flood(
        |pkh| format!("POST /keys/{pkh} HTTP/1.1\r\nhost: gw\r\n").into_bytes(),
        b"x-a: b\r\n",
    )
    .await;
}

/// Send `request` raw and read the whole answer (the gateway closes after these).
async fn raw(gw: SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let value = serde_json::from_str(body).unwrap_or(serde_json::Value::String(text.clone()));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_the_http_layer_are_json_traces() {
    let signer = signer().await;
    let pkh = signer.pkhs()[0];
    let gw = Gateway::start(&GatewayConfig::new(&[("primary", signer.addr())]).to_yaml())
        .await
        .unwrap();
    // 431: a header bomb.
    let bomb = format!(
        "GET /authorized_keys HTTP/1.1\r\nhost: gw\r\nx-bomb: {}\r\n\r\n",
        "a".repeat(600_000)
    );
    let (status, body) = raw(gw.api, bomb.as_bytes()).await;
    assert_eq!(status, 431, "{body}");
    assert_error_trace(&body).unwrap();
    // 414: a request target longer than HTTP/1 parsers take.
    let long = format!("GET /{} HTTP/1.1\r\nhost: gw\r\n\r\n", "p".repeat(70_000));
    let (status, body) = raw(gw.api, long.as_bytes()).await;
    assert_eq!(status, 414, "{body}");
    assert_error_trace(&body).unwrap();
    // 400: lengths that do not parse or contradict each other.
    for bad in [
        format!("POST /keys/{pkh} HTTP/1.1\r\nhost: gw\r\ncontent-length: abc\r\n\r\n"),
        format!("POST /keys/{pkh} HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n\"13\""),
        "GARBAGE\r\n\r\n".to_string(),
    ] {
        let (status, body) = raw(gw.api, bad.as_bytes()).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_error_trace(&body).unwrap();
    }
    // 413 for a client that writes its whole 600 kB body before reading: readable every time.
    let big = format!("\"{}\"", "ab".repeat(300_000));
    let req = format!(
        "POST /keys/{pkh} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
        big.len()
    );
    for i in 0..20 {
        let (status, body) = raw(gw.api, req.as_bytes()).await;
        assert_eq!(status, 413, "try {i}: {body}");
        assert_error_trace(&body).unwrap();
    }
    // The gateway keeps serving.
    let (status, body) = Client::new()
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 1, 0, 1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_at_one_signer_stays_within_its_cap() {
    let signer = TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(32)],
        mode: Mode::Slow(Duration::from_millis(50)),
        ..Default::default()
    })
    .await
    .unwrap();
    let pkh = signer.pkhs()[0];
    let mut cfg = GatewayConfig::new(&[("primary", signer.addr())]);
    cfg.policy_keys = format!("{{ {pkh}: {{ allow_generic: true }} }}");
    cfg.request_timeout = "20s".into();
    // One client here, 200 connections at once: lift the per-source cap for this test.
    let yaml = cfg.to_yaml().replace(
        "  max_body_bytes:",
        "  max_connections_per_source: 512\n  max_body_bytes:",
    ) + "max_in_flight_per_signer: 4\n";
    let gw = Gateway::start(&yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    let client = Client::new().with_timeout(Duration::from_secs(60));
    // The key first, so the burst is all signatures.
    let (status, _) = client.get(&gw.api_url(&format!("/keys/{pkh}"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    signer.reset_stats();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let c = client.clone();
        let api = gw.api;
        // 200 different generic operations: no watermark, every one reaches the signer.
        let mut bytes = generic_operation((i % 256) as u8);
        bytes.extend_from_slice(&i.to_be_bytes());
        burst.spawn(async move { c.sign(api, "", pkh, &bytes).await });
    }
    let mut ok = 0;
    while let Some(r) = burst.join_next().await {
        let (status, body) = r.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        ok += 1;
    }
    let st = signer.stats();
    assert_eq!(ok, 200);
    assert_eq!(st.signs, 200, "{st:?}");
    assert!(
        st.max_in_flight <= 4 + 1,
        "the signer saw {} requests at once (cap 4, plus a probe)",
        st.max_in_flight
    );
    assert!(st.max_in_flight >= 2, "the cap was never reached: {st:?}");
}

/// 300 connections that send only a banner, reopened as they are closed, from one address:
/// a Pi connecting from another address gets in and serves within 5 s in at least 4 of 5
/// tries, and a tunnel that was up before the flood keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banner_flood_does_not_lock_out_a_pi() {
    let dir = tempfile::Builder::new().prefix("gateway-flood-").tempdir().unwrap();
    let pi_key = SshKey::generate(dir.path(), "pi").unwrap();
    let other_key = SshKey::generate(dir.path(), "other").unwrap();
    let pi = signer().await;
    let other = TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(33)],
        ..Default::default()
    })
    .await
    .unwrap();
    let yaml = format!(
        r#"api: {{listen: 127.0.0.1:0}}
admin: {{listen: 127.0.0.1:0}}
watermark: {{backend: memory}}
ssh: {{listen: 127.0.0.1:0, host_key: "{{dir}}/ssh_host_ed25519_key"}}
signers:
  - name: pi
    tunnel: {{keys: ["{}"]}}
  - name: other
    tunnel: {{keys: ["{}"]}}
health_check: {{interval: 200ms, timeout: 1s, rise: 1, fall: 1}}
log_format: text
"#,
        pi_key.public, other_key.public
    );
    let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    let (ssh, _) = gw.ssh_endpoint().unwrap();
    let mut existing = SshClient::reverse_tunnel(&other_key, ssh, "other", other.addr(), &[]).unwrap();
    existing.wait_stderr(ALLOCATED, SETTLE).await.unwrap();
    gw.wait_signers_up(&["other"], SETTLE).await.unwrap();

    let until = Instant::now() + Duration::from_secs(60);
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let stop = Arc::clone(&stop);
        flood.spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if let Ok(mut s) = connect_from(ATTACKER, ssh).await {
                    let _ = s.write_all(b"SSH-2.0-flood\r\n").await;
                    let mut buf = [0u8; 4096];
                    // Hold it until the gateway closes it.
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                        if n == 0 || stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pkh = pi.pkhs()[0];
    let other_pkh = other.pkhs()[0];
    let client = Client::fresh_connections().with_timeout(Duration::from_secs(10));
    let mut served = 0;
    let mut times = Vec::new();
    // Every attempt at a higher level: one refused for want of a signer still raised its mark.
    let level = std::sync::atomic::AtomicI32::new(0);
    for try_no in 0..5 {
        let t = Instant::now();
        let mut tunnel = SshClient::reverse_tunnel(&pi_key, ssh, "pi", pi.addr(), &["-b", "127.0.0.1"]).unwrap();
        let up = eventually(Duration::from_secs(5), "the pi serving", || async {
            let level = level.fetch_add(1, Ordering::Relaxed) + 1;
            let (status, body) = client
                .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, level, 0, 1))
                .await?;
            anyhow::ensure!(status == StatusCode::OK, "{status} {body}");
            Ok(())
        })
        .await;
        times.push(t.elapsed());
        if up.is_ok() {
            served += 1;
        }
        tunnel.kill().await;
        gw.wait_signer_states(&["pi"], "down", SETTLE).await.unwrap();
        // The tunnel from before the flood still serves.
        let level = 10_000 + try_no;
        let (status, body) = client
            .sign(gw.api, "", other_pkh, &attestation(TEST_CHAIN, level, 0, 1))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "the existing tunnel: {body}");
    }
    stop.store(true, Ordering::Relaxed);
    while flood.join_next().await.is_some() {}
    let per_source = gw
        .metric("signer_gateway_ssh_sessions_total", "result", "rejected_per_source")
        .await
        .unwrap();
    eprintln!("pi served in {served} of 5 tries ({times:?}); {per_source} flood connections refused per source");
    assert!(served >= 4, "the pi served in {served} of 5 tries: {times:?}");
    assert!(per_source > 0.0, "the flood was never refused per source");
}

/// The store removed under a running gateway: it refuses (500), and neither a restart with
/// the production settings nor one with `create_if_missing: true` starts empty; the rescued
/// marks put back, bytes other than those released at a level are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_never_comes_back_empty() {
    let signer = signer().await;
    let pkh = signer.pkhs()[0];
    let cfg = GatewayConfig::new(&[("primary", signer.addr())]);
    let yaml = cfg.to_yaml();
    let mut gw = Gateway::start(&yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    let client = Client::new();
    let released = attestation(TEST_CHAIN, 50, 0, 1);
    let (status, body) = client.sign(gw.api, "", pkh, &released).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let store = gw.dir().join("watermarks");
    std::fs::remove_dir_all(&store).unwrap();
    let (status, body) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 51, 0, 1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    gw.kill();

    // create_if_missing: true (the harness default) and the production setting both refuse.
    for yaml in [
        yaml.clone(),
        yaml.replace("create_if_missing: true", "create_if_missing: false"),
    ] {
        let e = gw.restart_with(&yaml).await.expect_err("must not start");
        let log = gw.log();
        assert!(
            log.contains("lost state") || log.contains("does not exist"),
            "{e:#}\n{log}"
        );
        assert!(!store.exists(), "an empty store was created");
    }
    // The marks rescued beside the store go back: other bytes at the released level are refused.
    let rescue = gw.dir().join("watermarks.rescued.json");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(&rescue, store.join("watermarks.json")).unwrap();
    gw.restart_with(&yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    let (status, body) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 50, 0, 2))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// Authenticated sessions are capped per signer (`ssh.max_sessions_per_signer`): a leaked key
/// cannot open session after session; the sessions within the cap are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_signer_are_capped() {
    let dir = tempfile::Builder::new().prefix("gateway-sessions-").tempdir().unwrap();
    let key = SshKey::generate(dir.path(), "pi").unwrap();
    let yaml = format!(
        r#"api: {{listen: 127.0.0.1:0}}
admin: {{listen: 127.0.0.1:0}}
watermark: {{backend: memory}}
ssh: {{listen: 127.0.0.1:0, host_key: "{{dir}}/ssh_host_ed25519_key", max_sessions_per_signer: 2}}
signers:
  - name: pi
    tunnel: {{keys: ["{}"]}}
log_format: text
"#,
        key.public
    );
    let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    let (ssh, _) = gw.ssh_endpoint().unwrap();
    let mut within = Vec::new();
    for n in 1..=2 {
        within.push(SshClient::spawn(&key, ssh, "pi", &["-N"]).unwrap());
        eventually(SETTLE, "the session accepted", || async {
            let accepted = gw
                .metric("signer_gateway_ssh_sessions_total", "result", "accepted")
                .await?;
            anyhow::ensure!(accepted as usize == n, "{accepted} accepted");
            Ok(())
        })
        .await
        .unwrap();
    }
    let mut third = SshClient::spawn(&key, ssh, "pi", &["-N"]).unwrap();
    let status = third.wait_exit(SETTLE).await.unwrap();
    assert!(!status.success(), "a third session of one signer got in");
    let refused = gw
        .metric(
            "signer_gateway_ssh_sessions_total",
            "result",
            "rejected_too_many_sessions",
        )
        .await
        .unwrap();
    assert_eq!(refused, 1.0);
    for s in &mut within {
        assert!(
            s.try_status().unwrap().is_none(),
            "a session within the cap was dropped"
        );
    }
}
