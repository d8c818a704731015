//! The fault proxy's per-source modes (what `tests/tunnel_client.rs` uses as two "uplinks"),
//! against a local echo server: a mode set for one client address applies to that address's
//! connections only, current and new, and overrides the default until cleared; connections
//! are counted per source; `keep_client_ip` connects to the target from the client's address.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::fault_proxy::{FaultProxy, ProxyMode, ProxyOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// An echo server that records its peers.
async fn echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let p = peers.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, peer) = listener.accept().await.unwrap();
            p.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, peers)
}

/// Connect to `to` from `from` (port chosen by the kernel).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
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

async fn stays_quiet(s: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
        Err(_) => {}
        Ok(r) => panic!("expected silence, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_mode_applies_to_that_source_only() {
    let (target, _) = echo().await;
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
    let (target, peers) = echo().await;
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
