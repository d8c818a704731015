//! The fault proxy itself (used by the tunnel tests), against a local echo server: pass,
//! blackhole (sockets stay open, nothing moves, held bytes flow after healing), reset (RST
//! both ways, new connections reset), listen and source addresses, stop on drop, and the
//! delay line (a round trip per exchange, a handshake per connection, order kept under a
//! burst that is not serialised, faults with a delay), a link restored with its old
//! connections left frozen, and per-source modes (a mode set for one client address applies to
//! that address only and overrides the default until cleared; `keep_client_ip`).
//!
//! Timing assertions are lower bounds, plus upper bounds with a wide margin ([`SLACK`]): the
//! tests share 2 cores with others.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::fault_proxy::{FaultProxy, ProxyMode, ProxyOptions};
use testkit::harness::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// One-way delay of the delay-line tests.
const DELAY: Duration = Duration::from_millis(20);
/// Margin of every timing upper bound: wide, so a busy machine does not fail a test.
const SLACK: Duration = Duration::from_millis(400);

/// An echo server that records its peers and how each connection ended.
struct Echo {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    ends: Arc<Mutex<Vec<ErrorKind>>>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let (p, e) = (peers.clone(), ends.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, peer) = listener.accept().await.unwrap();
                p.lock().unwrap().push(peer);
                let e = e.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let end = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break ErrorKind::UnexpectedEof,
                            Ok(n) => {
                                if let Err(err) = s.write_all(&buf[..n]).await {
                                    break err.kind();
                                }
                            }
                            Err(err) => break err.kind(),
                        }
                    };
                    e.lock().unwrap().push(end);
                });
            }
        });
        Echo { addr, peers, ends }
    }
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo within 5 s")
        .unwrap();
    got
}

/// Wait until the proxy holds no connection any more.
async fn all_closed(proxy: &FaultProxy) {
    eventually(Duration::from_secs(2), "connections closed", || async {
        anyhow::ensure!(proxy.connections() == 0, "{proxy:?}");
        Ok(())
    })
    .await
    .unwrap();
}

/// Nothing arrives on `s` for [`QUIET`] (and the connection is not closed).
async fn stays_quiet(s: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
        Err(_) => {}
        Ok(r) => panic!("expected silence, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_forwards_and_counts() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"hello").await, b"hello");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.bytes(), (5, 5));
    // A half-close travels on: the echo server sees EOF and closes, so do we.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    all_closed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_bytes_and_connections_until_healed() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut old, b"before").await, b"before");

    proxy.set_mode(ProxyMode::Blackhole);
    old.write_all(b"during").await.unwrap();
    stays_quiet(&mut old).await;
    // New connections are accepted, not forwarded.
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    new.write_all(b"fresh").await.unwrap();
    stays_quiet(&mut new).await;
    assert_eq!(
        echo.peers.lock().unwrap().len(),
        1,
        "a blackholed connection reached the target"
    );
    assert_eq!(proxy.connections(), 2);

    proxy.set_mode(ProxyMode::Pass);
    let mut got = [0u8; 6];
    old.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"during");
    let mut got = [0u8; 5];
    new.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"fresh");
}

/// The way a real outage ends: the connections that lived through it (opened before, or
/// during it) stay frozen for good; new ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_leaving_frozen_keeps_old_connections_dead() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut before, b"before").await, b"before");
    proxy.set_mode(ProxyMode::Blackhole);
    let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
    during.write_all(b"during").await.unwrap();
    before.write_all(b"stuck").await.unwrap();
    // The kernel completes a connect before the proxy accepts it: wait for the accept.
    eventually(Duration::from_secs(5), "the proxy accepted both", || async {
        anyhow::ensure!(proxy.accepted() == 2, "{}", proxy.accepted());
        Ok(())
    })
    .await
    .unwrap();
    proxy.restore_leaving_frozen();
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    stays_quiet(&mut before).await;
    stays_quiet(&mut during).await;
    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut after, b"after").await, b"after");
    // A later blackhole and restore freeze the one that passed, and still pass new ones.
    proxy.set_mode(ProxyMode::Blackhole);
    proxy.restore_leaving_frozen();
    after.write_all(b"x").await.unwrap();
    stays_quiet(&mut after).await;
    let mut last = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut last, b"last").await, b"last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_aborts_both_sides_and_new_connections() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"x").await, b"x");

    proxy.set_mode(ProxyMode::Reset);
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(r.map_err(|e| e.kind()).unwrap_err(), ErrorKind::ConnectionReset);
    eventually(Duration::from_secs(2), "the target side reset", || async {
        let ends = echo.ends.lock().unwrap().clone();
        anyhow::ensure!(ends == [ErrorKind::ConnectionReset], "{ends:?}");
        Ok(())
    })
    .await
    .unwrap();

    // A new connection is accepted at the TCP level and reset at once: the connect itself
    // or the first read fails.
    let r = match TcpStream::connect(proxy.addr()).await {
        Ok(mut n) => tokio::time::timeout(Duration::from_secs(2), n.read(&mut buf))
            .await
            .unwrap(),
        Err(e) => Err(e),
    };
    assert_eq!(r.map_err(|e| e.kind()).unwrap_err(), ErrorKind::ConnectionReset);
    assert_eq!(echo.peers.lock().unwrap().len(), 1);
    assert_eq!(proxy.connections(), 0);

    proxy.set_mode(ProxyMode::Pass);
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"again").await, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_source_addresses() {
    let echo = Echo::start().await;
    let ip = |d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d));
    let proxy = FaultProxy::start_with(ProxyOptions {
        listen_ip: ip(2),
        source_ip: Some(ip(3)),
        ..ProxyOptions::new(echo.addr)
    })
    .await
    .unwrap();
    assert_eq!(proxy.addr().ip(), ip(2));
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"via .2").await, b"via .2");
    assert_eq!(echo.peers.lock().unwrap()[0].ip(), ip(3));
    let plain = FaultProxy::start_on(ip(3), echo.addr).await.unwrap();
    assert_eq!(plain.addr().ip(), ip(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_closes_everything() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    let addr = proxy.addr();
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut c, b"x").await, b"x");
    // Even a blackholed connection goes.
    proxy.set_mode(ProxyMode::Blackhole);
    drop(proxy);
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .expect("closed within 2 s");
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    eventually(Duration::from_secs(2), "listener closed", || async {
        anyhow::ensure!(TcpStream::connect(addr).await.is_err(), "still accepting");
        Ok(())
    })
    .await
    .unwrap();
}

/// A proxy with [`DELAY`] each way in front of an echo server, and a connection through it
/// that has made one exchange (its handshake is paid).
async fn delayed_echo() -> (Echo, FaultProxy, TcpStream) {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start_with(ProxyOptions {
        delay: DELAY,
        ..ProxyOptions::new(echo.addr)
    })
    .await
    .unwrap();
    assert_eq!(proxy.delay(), DELAY);
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    assert_eq!(round_trip(&mut c, b"warm").await, b"warm");
    (echo, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_costs_a_handshake_then_a_round_trip_per_exchange() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start_with(ProxyOptions {
        delay: DELAY,
        ..ProxyOptions::new(echo.addr)
    })
    .await
    .unwrap();
    // A new connection: the handshake's round trip, then the request's.
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    assert_eq!(round_trip(&mut c, b"first").await, b"first");
    let first = started.elapsed();
    assert!(first >= 4 * DELAY, "first exchange on a new connection took {first:?}");
    assert!(
        first < 4 * DELAY + SLACK,
        "first exchange on a new connection took {first:?}"
    );

    // Then one round trip per request/response.
    for i in 0..3u8 {
        let msg = [b'a' + i; 32];
        let started = Instant::now();
        assert_eq!(round_trip(&mut c, &msg).await, msg);
        let rtt = started.elapsed();
        assert!(rtt >= 2 * DELAY, "round trip {i} took {rtt:?}");
        assert!(rtt < 2 * DELAY + SLACK, "round trip {i} took {rtt:?}");
    }
    // Counted as delivered, which may be just after the client read them.
    eventually(Duration::from_secs(2), "bytes counted", || async {
        anyhow::ensure!(proxy.bytes() == (5 + 96, 5 + 96), "{:?}", proxy.bytes());
        Ok(())
    })
    .await
    .unwrap();

    // A half-close travels behind the bytes sent before it.
    c.write_all(b"bye").await.unwrap();
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .unwrap();
    assert_eq!(rest, b"bye");
    all_closed(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_line_keeps_order_and_does_not_serialise_a_burst() {
    let (_echo, _proxy, c) = delayed_echo().await;
    // 100 writes 2 ms apart, each a separate chunk: serialised behind each other's delay they
    // would take 100 x 20 ms to cross; in a delay line the last one is back a round trip after
    // it was sent.
    const WRITES: usize = 100;
    const SIZE: usize = 1000;
    let (mut rx, mut tx) = c.into_split();
    let sent: Vec<u8> = (0..WRITES * SIZE).map(|i| (i / 7 % 251) as u8).collect();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; WRITES * SIZE];
        let mut first = None;
        let mut at = 0;
        while at < got.len() {
            let n = rx.read(&mut got[at..]).await.unwrap();
            assert!(n > 0, "closed after {at} bytes");
            first.get_or_insert_with(Instant::now);
            at += n;
        }
        (got, first.unwrap(), Instant::now())
    });
    let started = Instant::now();
    let mut last_sent = started;
    for chunk in sent.chunks(SIZE) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        tx.write_all(chunk).await.unwrap();
        last_sent = Instant::now();
    }
    let (got, first_back, all_back) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the burst came back within 10 s")
        .unwrap();
    assert!(got == sent, "bytes came back out of order or changed");
    let first = first_back - started;
    assert!(first >= 2 * DELAY, "the first bytes came back after {first:?}");
    let tail = all_back - last_sent;
    assert!(
        tail >= 2 * DELAY,
        "the last bytes came back {tail:?} after they were sent"
    );
    assert!(
        tail < 2 * DELAY + SLACK,
        "the last bytes came back {tail:?} after they were sent: the burst was serialised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_set_at_runtime_and_faults_with_a_delay() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await.unwrap();
    assert_eq!(proxy.delay(), Duration::ZERO);
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.set_nodelay(true).unwrap();
    assert_eq!(round_trip(&mut c, b"fast").await, b"fast");

    // A delay set now applies to the next bytes of a current connection.
    proxy.set_delay(DELAY);
    let started = Instant::now();
    assert_eq!(round_trip(&mut c, b"slow").await, b"slow");
    let rtt = started.elapsed();
    assert!(rtt >= 2 * DELAY, "round trip took {rtt:?}");

    // A blackhole holds the bytes in flight too; they arrive after healing.
    c.write_all(b"in flight").await.unwrap();
    proxy.set_mode(ProxyMode::Blackhole);
    stays_quiet(&mut c).await;
    proxy.set_mode(ProxyMode::Pass);
    let mut got = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("held bytes within 5 s")
        .unwrap();
    assert_eq!(&got, b"in flight");

    // A reset still aborts at once, bytes in flight and all.
    c.write_all(b"dropped").await.unwrap();
    proxy.set_mode(ProxyMode::Reset);
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(r.map_err(|e| e.kind()).unwrap_err(), ErrorKind::ConnectionReset);

    // Back to no delay: a new connection pays no handshake wait.
    proxy.set_mode(ProxyMode::Pass);
    proxy.set_delay(Duration::ZERO);
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"again").await, b"again");
    assert_eq!(echo.peers.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_applies_per_source_faults_too() {
    // Per-source modes still work with a delay: only the blackholed source goes quiet.
    let echo = Echo::start().await;
    let ip = |d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d));
    let proxy = FaultProxy::start_with(ProxyOptions {
        keep_client_ip: true,
        delay: DELAY,
        ..ProxyOptions::new(echo.addr)
    })
    .await
    .unwrap();
    let connect_from = |last| {
        let addr = proxy.addr();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip(last), 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    let mut two = connect_from(2).await;
    let mut three = connect_from(3).await;
    assert_eq!(round_trip(&mut two, b"two").await, b"two");
    assert_eq!(round_trip(&mut three, b"three").await, b"three");
    proxy.set_mode_for_source(ip(2), ProxyMode::Blackhole);
    two.write_all(b"held").await.unwrap();
    let started = Instant::now();
    assert_eq!(round_trip(&mut three, b"still").await, b"still");
    assert!(started.elapsed() >= 2 * DELAY);
    stays_quiet(&mut two).await;
    proxy.clear_mode_for_source(ip(2));
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), two.read_exact(&mut got))
        .await
        .expect("held bytes within 5 s")
        .unwrap();
    assert_eq!(&got, b"held");
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connect to `to` from `from` (port chosen by the kernel).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

// Per-source modes: what `tests/tunnel_client.rs` uses as two "uplinks".

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_mode_applies_to_that_source_only() {
    let echo = Echo::start().await;
    let target = echo.addr;
    let proxy = FaultProxy::start(target).await.unwrap();
    let mut a = connect_from(ip(2), proxy.addr()).await;
    let mut b = connect_from(ip(3), proxy.addr()).await;
    assert_eq!(round_trip(&mut a, b"a1").await, b"a1");
    assert_eq!(round_trip(&mut b, b"b1").await, b"b1");

    // .2's link dies silently; .3's keeps working, old and new connections alike.
    proxy.set_mode_for_source(ip(2), ProxyMode::Blackhole);
    assert_eq!(proxy.mode_for_source(ip(2)), ProxyMode::Blackhole);
    assert_eq!(proxy.mode_for_source(ip(3)), ProxyMode::Pass);
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    a.write_all(b"a2").await.unwrap();
    stays_quiet(&mut a).await;
    assert_eq!(round_trip(&mut b, b"b2").await, b"b2");
    let mut a_new = connect_from(ip(2), proxy.addr()).await;
    a_new.write_all(b"held").await.unwrap();
    stays_quiet(&mut a_new).await;
    let mut b_new = connect_from(ip(3), proxy.addr()).await;
    assert_eq!(round_trip(&mut b_new, b"b3").await, b"b3");

    // The source's mode overrides the default: a default change leaves .2 dark.
    proxy.set_mode(ProxyMode::Pass);
    stays_quiet(&mut a).await;

    // Healed: held bytes flow, as TCP would retransmit them.
    proxy.set_mode_for_source(ip(2), ProxyMode::Pass);
    let mut got = [0u8; 2];
    a.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"a2");
    let mut got = [0u8; 4];
    a_new.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"held");

    // Reset for .3 only: its connections get a RST, .2's carry on.
    proxy.set_mode_for_source(ip(3), ProxyMode::Reset);
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), b.read(&mut buf))
        .await
        .unwrap();
    assert_eq!(r.map_err(|e| e.kind()).unwrap_err(), ErrorKind::ConnectionReset);
    assert_eq!(round_trip(&mut a, b"a3").await, b"a3");

    // Cleared: .3 follows the default again.
    proxy.clear_mode_for_source(ip(3));
    assert_eq!(proxy.mode_for_source(ip(3)), ProxyMode::Pass);
    let mut b_again = connect_from(ip(3), proxy.addr()).await;
    assert_eq!(round_trip(&mut b_again, b"b4").await, b"b4");
    proxy.set_mode(ProxyMode::Blackhole);
    b_again.write_all(b"b5").await.unwrap();
    stays_quiet(&mut b_again).await;
    assert_eq!(round_trip(&mut a, b"a4").await, b"a4", ".2 has its own mode (pass)");

    assert_eq!(proxy.accepted_from(ip(2)), 2);
    assert_eq!(proxy.accepted_from(ip(3)), 3);
    assert_eq!(proxy.accepted_from(ip(4)), 0);
    assert_eq!(proxy.accepted(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_client_ip_connects_from_the_clients_address() {
    let echo = Echo::start().await;
    let (target, peers) = (echo.addr, Arc::clone(&echo.peers));
    let proxy = FaultProxy::start_with(ProxyOptions {
        keep_client_ip: true,
        ..ProxyOptions::new(target)
    })
    .await
    .unwrap();
    for last in [2, 3] {
        let mut c = connect_from(ip(last), proxy.addr()).await;
        assert_eq!(round_trip(&mut c, b"x").await, b"x");
    }
    let seen: Vec<IpAddr> = peers.lock().unwrap().iter().map(|p| p.ip()).collect();
    assert_eq!(seen, [ip(2), ip(3)]);

    let both = FaultProxy::start_with(ProxyOptions {
        keep_client_ip: true,
        source_ip: Some(ip(4)),
        ..ProxyOptions::new(target)
    })
    .await;
    assert_eq!(both.unwrap_err().kind(), ErrorKind::InvalidInput);
}
