//! Probing the local signer in its own protocol ([`probe`]): a `GET` of the configured path
//! for an HTTP signer, an authorized-keys request for a socket signer ([`socket`]). One task
//! probes it for every supervisor ([`track`]): one probe per interval however many gateway
//! replicas, and one verdict, so every replica withdraws and restores its forward at the same
//! moment.

use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, HealthCheckConfig, SignerProtocol};

mod socket;

/// Probe every `hc.interval` (the first one an interval from now: the caller probed once to
/// start `healthy`), and publish the verdict: down after `hc.fall` failures in a row, up again
/// after `hc.rise` successes in a row. Runs until dropped.
pub async fn track<P, Fut>(mut probe: P, hc: &HealthCheckConfig, signer: &str, healthy: watch::Sender<bool>)
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + hc.interval, hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut oks, mut fails) = (0u32, 0u32);
    loop {
        tick.tick().await;
        match probe().await {
            Ok(()) => {
                (oks, fails) = (oks.saturating_add(1), 0);
                if !*healthy.borrow() && oks >= hc.rise {
                    info!(signer, "local signer answers again");
                    healthy.send_replace(true);
                }
            }
            Err(why) => {
                (oks, fails) = (0, fails.saturating_add(1));
                if *healthy.borrow() && fails >= hc.fall {
                    warn!(signer, error = %why, "local signer not answering");
                    healthy.send_replace(false);
                }
            }
        }
    }
}

/// Probe the local signer once, in `cfg.signer_protocol`, within `health_check.timeout`; the
/// error is the reason it does not count as answering.
pub async fn probe(cfg: &Config) -> Result<(), String> {
    let timeout = cfg.health_check.timeout;
    let once = async {
        match cfg.signer_protocol {
            SignerProtocol::Http => http(&cfg.signer, &cfg.health_check.path).await,
            SignerProtocol::Socket => socket::probe(&cfg.signer).await,
        }
    };
    tokio::time::timeout(timeout, once)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// What [`probe`] asks, for people: `GET /authorized_keys`.
pub fn describe(cfg: &Config) -> String {
    match cfg.signer_protocol {
        SignerProtocol::Http => format!("GET {}", cfg.health_check.path),
        SignerProtocol::Socket => "the socket protocol's authorized-keys request".into(),
    }
}

/// GET `path` on the signer at `addr`; Ok when it answers 2xx.
async fn http(addr: &str, path: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Drain the body so the signer sees a complete exchange.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Rise and fall counted on consecutive probes, on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn down_after_fall_failures_up_after_rise_successes() {
        let hc = HealthCheckConfig {
            fall: 2,
            rise: 3,
            ..HealthCheckConfig::default()
        };
        let answers = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = watch::channel(true);
        let t0 = tokio::time::Instant::now();
        let probe = {
            let answers = Arc::clone(&answers);
            move || {
                let ok = answers.load(Ordering::Relaxed);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("refused".to_string())
                    }
                }
            }
        };
        let tracker = tokio::spawn(async move { track(probe, &hc, "local", tx).await });
        // Stops answering just after the 2 s probe: the 3 s and 4 s probes fail, 4 s decides.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        answers.store(false, Ordering::Relaxed);
        rx.wait_for(|up| !up).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
        // Back just after: the 5, 6 and 7 s probes succeed, 7 s decides.
        answers.store(true, Ordering::Relaxed);
        rx.wait_for(|up| *up).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(7));
        tracker.abort();
    }
}
