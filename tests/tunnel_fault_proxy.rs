//! The fault proxy itself (used by `tests/tunnel.rs`), against a local echo server: pass,
//! blackhole (sockets stay open, nothing moves, held bytes flow after healing), reset (RST
//! both ways, new connections reset), listen and source addresses, stop on drop.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_e2e::fault_proxy::{FaultProxy, ProxyMode, ProxyOptions};
use gateway_e2e::harness::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

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
    eventually(Duration::from_secs(2), "connection closed", || async {
        anyhow::ensure!(proxy.connections() == 0, "{proxy:?}");
        Ok(())
    })
    .await
    .unwrap();
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
