//! The etcd watermark store in `e2e_load`: real etcd clusters of one and three members
//! (`testkit::etcd`, Debian's `etcd-server`), the raw compare-and-swap transaction the store's
//! cost is compared with, and the partition figures (cut to first refusal, heal to first
//! signature) of a gateway whose links to every member freeze.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use http::StatusCode;
use testkit::etcd::EtcdCluster;
use testkit::fault_proxy::{FaultProxy, ProxyMode};
use testkit::harness::{attestation, Client as HttpClient, TEST_CHAIN};

use super::stats::Latencies;

/// The store's refusal bound in these runs (`watermark.etcd.request_timeout`, its default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `watermark:` YAML for a gateway on `endpoints` under `prefix`.
pub fn watermark_yaml(endpoints: &[String], prefix: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{{backend: etcd, create_if_missing: true, etcd: {{endpoints: [{}], prefix: \"{prefix}\", request_timeout: {}ms}}}}",
        list.join(", "),
        REQUEST_TIMEOUT.as_millis()
    )
}

/// Start a cluster of `members` under `dir`.
pub async fn cluster(dir: &Path, members: usize) -> anyhow::Result<EtcdCluster> {
    std::fs::create_dir_all(dir)?;
    EtcdCluster::start(dir, members).await
}

/// `n` compare-and-swap transactions on one key, as the store's check-and-record makes them
/// (`if mod_revision == last then put`), each timed from send to commit, after 20 unmeasured.
pub async fn raw_cas(endpoints: &[String], n: usize) -> anyhow::Result<Latencies> {
    let mut kv = Client::connect(endpoints, None).await?.kv_client();
    let key = format!("/bench-raw-cas/{}", std::process::id());
    let mut revision = 0;
    let mut latencies = Latencies::default();
    for i in 0..n + 20 {
        let value = format!(
            r#"{{"v":1,"level":{i},"round":0,"digest":"{:064x}","signature":null}}"#,
            i
        );
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key.clone(), value, None)]);
        let started = Instant::now();
        let resp = kv.txn(txn).await?;
        let took = started.elapsed();
        anyhow::ensure!(resp.succeeded(), "raw CAS {i} lost: nobody else writes this key");
        revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if i >= 20 {
            latencies.record(took);
        }
    }
    Ok(latencies)
}

/// `clients` tasks, each on its own key, sending compare-and-swap transactions back to back
/// for `secs`: etcd's own ceiling on this machine. Returns (transactions/s, latencies).
pub async fn raw_cas_concurrent(endpoints: &[String], clients: usize, secs: f64) -> anyhow::Result<(f64, Latencies)> {
    let client = Client::connect(endpoints, None).await?;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = client.kv_client();
        let key = format!("/bench-raw-cas/{}/{c}", std::process::id());
        tasks.spawn(async move {
            let (mut revision, mut latencies) = (0, Latencies::default());
            while Instant::now() < until {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
                    .and_then([TxnOp::put(key.clone(), format!("{revision}"), None)]);
                let started = Instant::now();
                let resp = kv.txn(txn).await?;
                latencies.record(started.elapsed());
                anyhow::ensure!(resp.succeeded(), "raw CAS lost: nobody else writes {key}");
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            anyhow::Ok(latencies)
        });
    }
    let started = Instant::now();
    let mut all = Latencies::default();
    while let Some(done) = tasks.join_next().await {
        all.merge(&done??);
    }
    Ok((all.count() as f64 / started.elapsed().as_secs_f64(), all))
}

/// One partition run's figures.
pub struct Partition {
    /// Cut (every link to etcd frozen) to the first refusal answered.
    pub to_refusal: Duration,
    /// Requests answered 200 after the cut had taken hold (cut + bound): must be 0.
    pub signed_while_cut: usize,
    /// Heal to the first signature.
    pub to_signature: Duration,
}

/// A gateway at `api` whose etcd links are `links`: one client signs every `every`; the links
/// freeze for `outage`, then return. Levels continue from `*level`.
pub async fn partition_run(
    api: SocketAddr,
    pkh: &str,
    links: &[FaultProxy],
    outage: Duration,
    every: Duration,
    level: &mut i32,
) -> anyhow::Result<Partition> {
    let pkh: signer_gateway::tezos::Pkh = pkh.parse()?;
    // A new connection per request, as octez's baker makes them.
    let sign = |level: i32| async move {
        let client = HttpClient::new().with_timeout(REQUEST_TIMEOUT * 3);
        client.sign(api, "", pkh, &attestation(TEST_CHAIN, level, 0, 1)).await
    };
    // Serving before the cut.
    *level += 1;
    let (code, body) = sign(*level).await?;
    anyhow::ensure!(code == StatusCode::OK, "before the cut: {code} {body}");

    let cut = Instant::now();
    for l in links {
        l.set_mode(ProxyMode::Blackhole);
    }
    // Requests keep their pace: one every `every`, each in its own task, as a baker's would.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut to_refusal = None;
    let mut signed_while_cut = 0;
    while cut.elapsed() < outage {
        *level += 1;
        let fut = sign(*level);
        in_flight.spawn(async move { (fut.await, Instant::now()) });
        tokio::time::sleep(every).await;
        while let Some(done) = in_flight.try_join_next() {
            let (answer, at) = done?;
            match answer? {
                (StatusCode::OK, _) if at > cut + REQUEST_TIMEOUT => signed_while_cut += 1,
                (StatusCode::OK, _) => {}
                _ => {
                    to_refusal.get_or_insert(at - cut);
                }
            }
        }
    }
    let heal = Instant::now();
    for l in links {
        l.set_mode(ProxyMode::Pass);
    }
    while let Some(done) = in_flight.join_next().await {
        let (answer, at) = done?;
        if let (StatusCode::OK, _) = answer? {
            if at > cut + REQUEST_TIMEOUT && at < heal {
                signed_while_cut += 1;
            }
        } else {
            to_refusal.get_or_insert(at - cut);
        }
    }
    let to_signature = loop {
        *level += 1;
        if let (StatusCode::OK, _) = sign(*level).await? {
            break heal.elapsed();
        }
        anyhow::ensure!(
            heal.elapsed() < Duration::from_secs(30),
            "no signature 30 s after the heal"
        );
        tokio::time::sleep(every).await;
    };
    Ok(Partition {
        to_refusal: to_refusal.ok_or_else(|| anyhow::anyhow!("no refusal during a {outage:?} cut"))?,
        signed_while_cut,
        to_signature,
    })
}
