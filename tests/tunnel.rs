//! The embedded SSH server against stock OpenSSH: a Pi's `ssh -N -R` serves signatures;
//! everything but the reverse forward is refused while the signers keep serving; a silently
//! dead link is dropped within the keepalive bound while the TCP backup serves; a reconnect
//! wins over the stale session at once; a cleanly closed tunnel fails over at once.
//!
//! Each test runs its own gateway in its own temp dir, with an in-process test signer `pi`
//! behind the tunnel and another, `backup`, over TCP, both holding the same key.
//!
//! Needs the `signer-gateway` binary (`cargo build --workspace --bins` first) and OpenSSH's
//! `ssh` and `ssh-keygen` (Debian: `openssh-client`); without them the tests fail saying so.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::StatusCode;
use testkit::fault_proxy::{FaultProxy, ProxyMode, ProxyOptions};
use testkit::harness::eventually;
use testkit::ssh_client::{ssh_bin, ssh_keygen_bin, SshClient, SshKey, ALLOCATED};
use testkit::traffic::{Served, Traffic};
use testkit::tunnel_rig::{ticker, GatewayTiming, RigOptions, TunnelRig, CONNECT_SETTLE, HEALTH_SETTLE, REQUEST_EVERY};

/// `request_timeout` in the config.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Server keepalive: interval × max in the config.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_MAX: u32 = 3;
/// A silent link must be dropped by then: (max + 1) × interval after the last byte, plus
/// scheduling slack on a loaded 2-core box.
const KEEPALIVE_BOUND: Duration = Duration::from_secs(8);
/// Time for ssh to connect and have its forward accepted, or to give up.
const SSH_SETTLE: Duration = CONNECT_SETTLE;

/// The rig: `pi` in process behind the tunnel, `backup` over TCP, no proxy (the link-fault
/// tests put their own in front of the SSH port).
async fn start() -> anyhow::Result<TunnelRig> {
    // Fail with the install hint before anything else.
    ssh_bin()?;
    ssh_keygen_bin()?;
    TunnelRig::start(RigOptions {
        timing: GatewayTiming {
            request_timeout: Some(REQUEST_TIMEOUT),
            keepalive: Some((KEEPALIVE_INTERVAL, KEEPALIVE_MAX)),
            ..GatewayTiming::fast()
        },
        ..RigOptions::new("gateway-tunnel-")
    })
    .await
}

/// After a refusal: the tunnel of `peer` is still the route (not replaced), pi serves
/// through it and the backup is still up.
async fn assert_still_serving(rig: &TunnelRig, peer: &str) -> anyhow::Result<()> {
    let t = rig.tunnel_status().await?;
    anyhow::ensure!(
        t["connected"] == true && t["peer"] == peer && t["replacements"] == 0,
        "the refused session disturbed the tunnel: {t}"
    );
    rig.sign_ok_by(Served::Pi).await?;
    anyhow::ensure!(rig.gw.signer_state("backup").await? == "up", "backup not up");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Interop

testkit::rig_test!(with start;
    /// Stock `ssh -N -R` with a listed key: the tunnel shows in /status and metrics, and a
    /// sign through the gateway is served by the signer behind it.
    openssh_reverse_tunnel_serves_signatures,
    openssh_reverse_tunnel_serves_signatures_body
);

async fn openssh_reverse_tunnel_serves_signatures_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let (_ssh, peer) = rig.openssh_up().await?;
    anyhow::ensure!(peer.starts_with("127.0.0.1:"), "peer {peer}");
    let status = rig.gw.status().await?;
    anyhow::ensure!(
        status["ssh"]["host_key_fingerprint"] == rig.host_key.as_str() && rig.host_key.starts_with("SHA256:"),
        "fingerprint in /status vs ready line {}: {}",
        rig.host_key,
        status["ssh"]
    );
    let t = rig.tunnel_status().await?;
    anyhow::ensure!(t["connected_since"].is_string() && t["replacements"] == 0, "{t}");
    anyhow::ensure!(rig.metric("signer_gateway_tunnel_connected", "signer", "pi").await? == 1.0);
    anyhow::ensure!(
        rig.metric("signer_gateway_ssh_sessions_total", "result", "accepted")
            .await?
            >= 1.0
    );

    let before = rig.pi.stats().await?.signs;
    rig.sign_ok_by(Served::Pi).await?;
    anyhow::ensure!(
        rig.pi.stats().await?.signs == before + 1,
        "pi's signer did not count the sign"
    );
    anyhow::ensure!(rig.backup.stats().signs == 0, "the backup signed too");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Refusals: each with pi's tunnel up and the backup serving; afterwards the tunnel must be
// the same session, still serving.

/// Run `ssh` (with `key`, or the listed one) expecting it to fail: returns its stderr.
async fn ssh_must_fail(rig: &TunnelRig, key: Option<&SshKey>, extra: &[&str]) -> anyhow::Result<String> {
    let mut ssh = SshClient::spawn(key.unwrap_or(&rig.key), rig.ssh, "pi", extra)?;
    let status = ssh.wait_exit(SSH_SETTLE).await?;
    let stderr = ssh.stderr();
    anyhow::ensure!(
        !status.success(),
        "`{}` succeeded; stdout: {:?}, stderr: {stderr}",
        ssh.command(),
        ssh.stdout()
    );
    anyhow::ensure!(
        !ssh.stdout().contains("hi"),
        "the remote command ran: {:?}",
        ssh.stdout()
    );
    Ok(stderr)
}

/// A session channel request (exec, shell, subsystem, agent) is refused: "open failed …
/// administratively prohibited", and counted.
async fn session_refused(rig: &mut TunnelRig, extra: &[&str]) -> anyhow::Result<()> {
    let (_tunnel, peer) = rig.openssh_up().await?;
    let before = rig
        .metric("signer_gateway_ssh_refused_requests_total", "kind", "session")
        .await?;
    let stderr = ssh_must_fail(rig, None, extra).await?;
    anyhow::ensure!(
        stderr.contains("open failed") && stderr.contains("prohibited"),
        "ssh did not report a refused channel: {stderr}"
    );
    let after = rig
        .metric("signer_gateway_ssh_refused_requests_total", "kind", "session")
        .await?;
    anyhow::ensure!(after > before, "refused_requests{{kind=session}} {before} -> {after}");
    assert_still_serving(rig, &peer).await
}

testkit::rig_test!(with start;
    /// A key nobody listed: ssh fails with "Permission denied (publickey)", the rejection is
    /// counted, and the tunnel of the real key is untouched.
    unknown_key_is_rejected,
    unknown_key_is_rejected_body
);

async fn unknown_key_is_rejected_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let (_tunnel, peer) = rig.openssh_up().await?;
    let stranger = SshKey::generate(rig.dir(), "stranger_ed25519")?;
    let metric = ("signer_gateway_ssh_sessions_total", "result", "rejected_unknown_key");
    let before = rig.metric(metric.0, metric.1, metric.2).await?;
    let forward = format!("0:127.0.0.1:{}", rig.backup.addr().port());
    let stderr = ssh_must_fail(rig, Some(&stranger), &["-N", "-R", &forward]).await?;
    anyhow::ensure!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    // Counted once the connection is over at the latest.
    eventually(Duration::from_secs(2), "rejected_unknown_key counted", || async {
        let after = rig.metric(metric.0, metric.1, metric.2).await?;
        anyhow::ensure!(
            after > before,
            "ssh_sessions_total{{result=rejected_unknown_key}} {before} -> {after}"
        );
        Ok(())
    })
    .await?;
    assert_still_serving(rig, &peer).await
}

testkit::rig_test!(with start;
    /// Password authentication: the server offers only `publickey`, so a client limited to
    /// passwords gets "Permission denied (publickey)".
    password_auth_is_refused,
    password_auth_is_refused_body
);

async fn password_auth_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let (_tunnel, peer) = rig.openssh_up().await?;
    let stderr = ssh_must_fail(
        rig,
        None,
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-N",
        ],
    )
    .await?;
    anyhow::ensure!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    assert_still_serving(rig, &peer).await
}

testkit::rig_test!(with start;
    /// `ssh pi@gateway echo hi` with the listed key: no exec.
    exec_is_refused,
    exec_is_refused_body
);

async fn exec_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    session_refused(rig, &["--", "echo", "hi"]).await
}

testkit::rig_test!(with start;
    /// `ssh -tt pi@gateway`: no shell, no pty.
    shell_with_pty_is_refused,
    shell_with_pty_is_refused_body
);

async fn shell_with_pty_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    session_refused(rig, &["-tt"]).await
}

testkit::rig_test!(with start;
    /// `ssh -s pi@gateway sftp`: no subsystem.
    subsystem_is_refused,
    subsystem_is_refused_body
);

async fn subsystem_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    session_refused(rig, &["-s", "--", "sftp"]).await
}

testkit::rig_test!(with start;
    /// `ssh -A pi@gateway echo hi`: agent forwarding rides on a session channel, refused
    /// before any agent request.
    agent_forwarding_is_refused,
    agent_forwarding_is_refused_body
);

async fn agent_forwarding_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    session_refused(rig, &["-A", "-o", "ForwardAgent=yes", "--", "echo", "hi"]).await
}

testkit::rig_test!(with start;
    /// `ssh -N -L <local>:<backup signer>`: a connection to the local port is closed without
    /// a byte from the target, ssh reports "open failed", the refusal is counted.
    direct_tcpip_is_refused,
    direct_tcpip_is_refused_body
);

async fn direct_tcpip_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (_tunnel, peer) = rig.openssh_up().await?;
    let metric = ("signer_gateway_ssh_refused_requests_total", "kind", "direct_tcpip");
    let before = rig.metric(metric.0, metric.1, metric.2).await?;
    // A real service as the target, so a leak would show as an HTTP answer.
    let target = rig.backup.addr();
    let local = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let forward = format!("{local}:{target}");
    let mut ssh = SshClient::spawn(
        &rig.key,
        rig.ssh,
        "pi",
        &["-N", "-L", &forward, "-o", "ExitOnForwardFailure=yes"],
    )?;
    let listening_by = Instant::now() + SSH_SETTLE;
    let mut conn = loop {
        if let Some(status) = ssh.try_status()? {
            anyhow::bail!("ssh -L exited ({status}): {}", ssh.stderr());
        }
        match tokio::net::TcpStream::connect(local).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > listening_by => {
                anyhow::bail!("ssh's local forward not listening on {local}: {e}; {}", ssh.stderr())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    };
    conn.write_all(b"GET /authorized_keys HTTP/1.0\r\n\r\n").await?;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got))
        .await
        .context("the forwarded connection stayed open")?;
    // EOF or a reset: either way nothing from the target.
    anyhow::ensure!(
        got.is_empty(),
        "bytes came through a refused forward ({read:?}): {:?}",
        String::from_utf8_lossy(&got)
    );
    ssh.wait_stderr("open failed", Duration::from_secs(5)).await?;
    anyhow::ensure!(ssh.stderr().contains("prohibited"), "{}", ssh.stderr());
    let after = rig.metric(metric.0, metric.1, metric.2).await?;
    anyhow::ensure!(
        after > before,
        "refused_requests{{kind=direct_tcpip}} {before} -> {after}"
    );
    assert_still_serving(rig, &peer).await
}

testkit::rig_test!(with start;
    /// `ssh -N -R <path>:<signer>` (a Unix-socket forward): refused, counted, the TCP tunnel
    /// of the same key untouched.
    streamlocal_forward_is_refused,
    streamlocal_forward_is_refused_body
);

async fn streamlocal_forward_is_refused_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let (_tunnel, peer) = rig.openssh_up().await?;
    let metric = ("signer_gateway_ssh_refused_requests_total", "kind", "streamlocal");
    let before = rig.metric(metric.0, metric.1, metric.2).await?;
    let forward = format!("{}:{}", rig.dir().join("fwd.sock").display(), rig.pi.addr());
    let stderr = ssh_must_fail(rig, None, &["-N", "-R", &forward, "-o", "ExitOnForwardFailure=yes"]).await?;
    anyhow::ensure!(stderr.contains("forwarding failed"), "{stderr}");
    let after = rig.metric(metric.0, metric.1, metric.2).await?;
    anyhow::ensure!(
        after > before,
        "refused_requests{{kind=streamlocal}} {before} -> {after}"
    );
    assert_still_serving(rig, &peer).await
}

// ---------------------------------------------------------------------------------------------
// Link faults

testkit::rig_test!(with start;
    /// The tunnel's link goes silently dead (fault proxy in blackhole): one request every
    /// 100 ms keeps getting 200 (the backup takes over), and the gateway drops the session
    /// within the keepalive bound.
    blackholed_tunnel_is_dropped_within_keepalive_bound,
    blackholed_tunnel_is_dropped_within_keepalive_bound_body
);

async fn blackholed_tunnel_is_dropped_within_keepalive_bound_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let proxy = FaultProxy::start(rig.ssh).await?;
    // The client must not give up first (that would close the link, not time it out).
    let mut ssh = rig.openssh(
        proxy.addr(),
        &["-o", "ServerAliveInterval=60", "-o", "ServerAliveCountMax=10"],
    )?;
    ssh.wait_stderr(ALLOCATED, SSH_SETTLE).await?;
    rig.wait_tunnel("", SSH_SETTLE).await?;
    rig.sign_ok_by(Served::Pi).await?;

    proxy.set_mode(ProxyMode::Blackhole);
    let blackholed = Instant::now();
    let stop = AtomicBool::new(false);
    let rig = &*rig;

    // Watch /status for the drop, concurrently with the requests.
    let watch = async {
        let r = eventually(KEEPALIVE_BOUND, "tunnel dropped after the blackhole", || async {
            anyhow::ensure!(rig.tunnel_status().await?["connected"] == false, "still connected");
            Ok(blackholed.elapsed())
        })
        .await;
        // Keep the requests going a little after the drop (or the failure).
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        r
    };
    let requests = async {
        let mut traffic = Traffic::default();
        let mut tick = ticker(REQUEST_EVERY);
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            rig.sign_into(&mut traffic, blackholed).await;
        }
        traffic
    };
    let (dropped_after, traffic) = tokio::join!(watch, requests);
    let dropped_after = dropped_after?;

    traffic.ensure_all_ok("during the blackhole")?;
    // Nothing crosses the dead link: every request (all sent after the blackhole) must have
    // been served by the backup.
    anyhow::ensure!(
        traffic.count(Served::Pi) == 0,
        "served by pi through a dead link: {}",
        traffic.summary()
    );
    // At worst one attempt on the dead link (request_timeout), then the backup.
    let slow = traffic.slower_than(REQUEST_TIMEOUT + Duration::from_millis(700));
    anyhow::ensure!(slow.is_empty(), "requests slower than one failover: {slow:?}");
    anyhow::ensure!(
        traffic.len() >= 20,
        "only {} requests in {dropped_after:?}",
        traffic.len()
    );
    // (max + 1) × interval after the last byte, which came at most one interval before.
    let floor = KEEPALIVE_INTERVAL * KEEPALIVE_MAX;
    anyhow::ensure!(
        dropped_after >= floor,
        "dropped after {dropped_after:?}: sooner than keepalives allow"
    );
    let t = rig.tunnel_status().await?;
    anyhow::ensure!(
        t["last_disconnect"]
            .as_str()
            .is_some_and(|d| d.contains("keepalive timeout")),
        "last_disconnect should name the keepalive timeout: {t}"
    );
    anyhow::ensure!(
        rig.metric("signer_gateway_tunnel_keepalive_timeouts_total", "signer", "pi")
            .await?
            == 1.0,
        "keepalive timeout not counted"
    );
    anyhow::ensure!(rig.metric("signer_gateway_tunnel_connected", "signer", "pi").await? == 0.0);
    anyhow::ensure!(rig.gw.signer_state("pi").await? == "down", "pi not down");
    rig.sign_ok_by(Served::Backup).await?;
    eprintln!(
        "blackhole: tunnel dropped {dropped_after:?} after it; {}",
        traffic.summary()
    );
    ssh.kill().await;
    Ok(())
}

testkit::rig_test!(with start;
    /// The Pi reconnects (directly) while its old session, behind a blackholed link, is still
    /// registered: within 1 s of the new forward being accepted the gateway routes to the new
    /// session, without waiting for the keepalive timeout; the old session is closed by the
    /// gateway, and its end does not take the new route down.
    reconnect_replaces_stale_session_at_once,
    reconnect_replaces_stale_session_at_once_body
);

async fn reconnect_replaces_stale_session_at_once_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    // Through the proxy from 127.0.0.2, so the two sessions' peers differ by address.
    let proxy = FaultProxy::start_with(ProxyOptions {
        source_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        ..ProxyOptions::new(rig.ssh)
    })
    .await?;
    let mut old = rig.openssh(
        proxy.addr(),
        &["-o", "ServerAliveInterval=60", "-o", "ServerAliveCountMax=10"],
    )?;
    old.wait_stderr(ALLOCATED, SSH_SETTLE).await?;
    let old_peer = rig.wait_tunnel("", SSH_SETTLE).await?["peer"].clone();
    anyhow::ensure!(
        old_peer.as_str().is_some_and(|p| p.starts_with("127.0.0.2:")),
        "old peer {old_peer}"
    );
    rig.sign_ok_by(Served::Pi).await?;

    proxy.set_mode(ProxyMode::Blackhole);
    let blackholed = Instant::now();
    let mut new = rig.openssh(rig.ssh, &[])?;
    let accepted = new.wait_stderr(ALLOCATED, SSH_SETTLE).await?;

    // Served by pi (so through the new session: the old one is blackholed) within 1 s.
    let pi_before = rig.pi.stats().await?.signs;
    let deadline = accepted + Duration::from_secs(1);
    let served_at = loop {
        let s = rig.sign().await?;
        anyhow::ensure!(
            s.status == StatusCode::OK,
            "sign during the reconnect: {} {}",
            s.status,
            s.body
        );
        if s.by == Served::Pi {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pi did not serve within 1 s of the new forward; last sign by {:?}",
            s.by
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(rig.pi.stats().await?.signs > pi_before);
    let t = rig.tunnel_status().await?;
    let new_peer = t["peer"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        t["connected"] == true && new_peer.starts_with("127.0.0.1:") && t["replacements"] == 1,
        "/status after the reconnect (old peer {old_peer}): {t}"
    );
    anyhow::ensure!(t["last_replacement"].is_string(), "{t}");
    anyhow::ensure!(
        rig.metric("signer_gateway_tunnel_replacements_total", "signer", "pi")
            .await?
            == 1.0,
        "replacement not counted"
    );
    let since_accept = served_at.saturating_duration_since(accepted);
    let since_blackhole = served_at - blackholed;
    anyhow::ensure!(
        since_blackhole < KEEPALIVE_INTERVAL * (KEEPALIVE_MAX + 1),
        "took {since_blackhole:?} from the blackhole: as if waiting for the keepalive timeout"
    );

    // The gateway closed the old session (disconnect, then socket shutdown after ~1 s): once
    // the link heals, the old client reads that and exits; its end leaves the new route be.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(accepted.elapsed())).await;
    proxy.set_mode(ProxyMode::Pass);
    let status = old.wait_exit(Duration::from_secs(5)).await?;
    anyhow::ensure!(
        !status.success() && old.stderr().contains("replaced by a newer session"),
        "old client exited {status} without the gateway's disconnect: {}",
        old.stderr()
    );
    let t = rig.tunnel_status().await?;
    anyhow::ensure!(
        t["connected"] == true && t["peer"] == new_peer.as_str() && t["replacements"] == 1,
        "the old session's end disturbed the new route: {t}"
    );
    anyhow::ensure!(
        rig.metric("signer_gateway_tunnel_keepalive_timeouts_total", "signer", "pi")
            .await?
            == 0.0,
        "a keepalive timeout was counted"
    );
    rig.sign_ok_by(Served::Pi).await?;
    eprintln!(
        "reconnect: pi served {since_accept:?} after the new forward was accepted \
         ({since_blackhole:?} after the blackhole)"
    );
    Ok(())
}

testkit::rig_test!(with start;
    /// The Pi's ssh exits cleanly (SIGTERM): the very next request goes to the backup, fast,
    /// and /status shows the tunnel gone.
    closed_tunnel_fails_over_at_once,
    closed_tunnel_fails_over_at_once_body
);

async fn closed_tunnel_fails_over_at_once_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let (mut ssh, _peer) = rig.openssh_up().await?;
    // Warm: the pool holds an open channel through the tunnel.
    rig.sign_ok_by(Served::Pi).await?;
    ssh.terminate(Duration::from_secs(5)).await?;
    let s = rig.sign_ok_by(Served::Backup).await?;
    anyhow::ensure!(
        s.took < Duration::from_millis(500),
        "first request after the tunnel closed took {:?}",
        s.took
    );
    eventually(Duration::from_secs(2), "tunnel shown closed", || async {
        let t = rig.tunnel_status().await?;
        anyhow::ensure!(t["connected"] == false && t["last_disconnect"].is_string(), "{t}");
        Ok(())
    })
    .await?;
    anyhow::ensure!(rig.gw.signer_state("pi").await? == "down", "pi not down");
    anyhow::ensure!(rig.metric("signer_gateway_tunnel_connected", "signer", "pi").await? == 0.0);
    eprintln!("clean close: first request after it took {:?}", s.took);
    Ok(())
}

testkit::rig_test!(with start;
    /// Two live devices sharing one key keep replacing each other's session: beyond
    /// `ssh.max_replacements_per_minute` (6) the gateway counts a storm and logs an error
    /// naming the likely cause, so an alert fires instead of a silent flap.
    replacement_storm_is_reported,
    replacement_storm_is_reported_body
);

async fn replacement_storm_is_reported_body(rig: &mut TunnelRig) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    for round in 0..8u32 {
        let mut c = rig.openssh(rig.ssh, &[])?;
        c.wait_stderr(ALLOCATED, SSH_SETTLE).await?;
        // Each new session takes the route from the previous one.
        let want = f64::from(round);
        eventually(HEALTH_SETTLE, "the replacement to be counted", || async {
            let n = rig
                .metric("signer_gateway_tunnel_replacements_total", "signer", "pi")
                .await?;
            anyhow::ensure!(n >= want, "replacements {n} < {want}");
            Ok(())
        })
        .await?;
        clients.push(c);
    }
    let storms = rig
        .metric("signer_gateway_tunnel_replacement_storms_total", "signer", "pi")
        .await?;
    anyhow::ensure!(
        storms >= 1.0,
        "7 replacements within a minute were not reported as a storm ({storms})"
    );
    let log = rig.gw.log();
    anyhow::ensure!(
        log.contains("are two live devices sharing one key?"),
        "no error line about two devices sharing a key"
    );
    // The newest session still serves.
    rig.sign_ok_by(Served::Pi).await?;
    Ok(())
}
