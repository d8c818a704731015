//! The etcd watermark store against real etcd (Debian's `etcd-server`) on loopback, one member
//! or a cluster of three, every member behind fault proxies (`testkit::etcd`):
//!
//! - the rule table (every row, tz1 and tz4) on etcd, on one store and across reopened ones;
//!   two stores (two gateways) never trusting their local views; one winner among concurrent
//!   writers of one mark;
//! - failing closed: a frozen link to etcd is a refusal within the bound, `/readyz` follows,
//!   and the store serves again by itself;
//! - gateways (real processes) on one cluster: split brain (two and three gateways, each with
//!   its own baker sending different bytes for the same level at the same moment, 1,000
//!   levels: exactly one signature per level); a gateway cut from etcd refuses everything while
//!   the other signs, and signs again when healed; the etcd leader killed mid-stream; etcd down
//!   entirely; kill -9 of the gateway and its etcd together;
//! - import: octez-signer's high-watermark files, and an export of the file store.
//!
//! Needs the gateway built with `--features etcd` (scripts/test.sh does) and `etcd`/`etcdctl`
//! (Debian `etcd-server`, `etcd-client`; scripts/install-deps.sh installs them). Without them
//! the tests say so and skip, or fail under CI.

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_store_tests_need_the_etcd_feature() {
    testkit::harness::skip_unless_ci(
        "tests/etcd.rs",
        "built without `--features etcd` (scripts/test.sh passes it; building it needs protoc)",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use http::StatusCode;
    use serde_json::Value;
    use signer_gateway::config::EtcdSettings;
    use signer_gateway::metrics::StoreMetrics;
    use signer_gateway::payload::Kind;
    use signer_gateway::tezos::{blake2b_256, ChainId, Pkh};
    use signer_gateway::watermark::conformance::{key, req, run_table};
    use signer_gateway::watermark::{
        EtcdStore, MarkKey, Outcome, RefusalReason, StoreCause, WatermarkError, WatermarkStore,
    };
    use tempfile::TempDir;
    use testkit::etcd::{etcd_bin, etcdctl_bin, make_tls, EtcdCluster};
    use testkit::fault_proxy::{FaultProxy, ProxyMode};
    use testkit::harness::{
        assert_error_trace, attestation, eventually, preattestation, skip_unless_ci, Client, Gateway, GatewayConfig,
        TEST_CHAIN,
    };
    use testkit::test_signer::{seed, TestSigner, TestSignerHandle, TestSignerOptions};

    /// `watermark.etcd.request_timeout` of these tests: the refusal bound.
    const BOUND: Duration = Duration::from_secs(2);
    /// Scheduling slack on a loaded 2-core machine, added to bounds derived from the config.
    const SLACK: Duration = Duration::from_secs(1);

    /// False (after a loud skip; a failure under CI) when etcd or etcdctl is missing.
    fn have_etcd(test: &str) -> bool {
        match etcd_bin().and_then(|_| etcdctl_bin()) {
            Ok(_) => true,
            Err(e) => {
                skip_unless_ci(test, &e.to_string());
                false
            }
        }
    }

    async fn cluster(n: usize) -> (TempDir, EtcdCluster) {
        let dir = tempfile::Builder::new()
            .prefix("etcd-test-")
            .tempdir()
            .expect("tempdir");
        let cluster = EtcdCluster::start(dir.path(), n).await.expect("etcd cluster");
        (dir, cluster)
    }

    /// A prefix no other test (or run of the table) uses.
    fn unique_prefix(what: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        format!("/{what}-{}-{}/", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
    }

    fn settings(endpoints: Vec<String>, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: prefix.to_string(),
            request_timeout: BOUND,
            tls: None,
            auth: None,
            create_if_missing: true,
        }
    }

    async fn store(endpoints: Vec<String>, prefix: &str) -> Arc<EtcdStore> {
        let metrics = StoreMetrics::new().expect("metrics");
        Arc::new(
            EtcdStore::connect(settings(endpoints, prefix), metrics)
                .await
                .expect("connect"),
        )
    }

    fn cause(e: &WatermarkError) -> Option<StoreCause> {
        match e {
            WatermarkError::Store(f) => Some(f.cause),
            _ => None,
        }
    }

    // ---- the store itself ---------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rule_table_on_one_store_and_across_reopened_stores() {
        if !have_etcd("rule_table_on_etcd") {
            return;
        }
        let (_dir, cluster) = cluster(1).await;
        let endpoints = cluster.endpoints();
        // The request is checked on the very store that played the history (its views are
        // current)…
        let slot: Arc<Mutex<Option<Arc<dyn WatermarkStore>>>> = Arc::default();
        run_table(|new| {
            let (slot, endpoints) = (slot.clone(), endpoints.clone());
            async move {
                if new {
                    let s: Arc<dyn WatermarkStore> = store(endpoints, &unique_prefix("table")).await;
                    *slot.lock().expect("slot") = Some(s);
                }
                slot.lock().expect("slot").clone().expect("a store")
            }
        })
        .await;
        // …and on a new store over the same prefix: no views, as after a restart or on
        // another gateway.
        let prefix: Arc<Mutex<String>> = Arc::default();
        run_table(|new| {
            let (prefix, endpoints) = (prefix.clone(), endpoints.clone());
            async move {
                if new {
                    *prefix.lock().expect("prefix") = unique_prefix("table-reopened");
                }
                let p = prefix.lock().expect("prefix").clone();
                store(endpoints, &p).await as Arc<dyn WatermarkStore>
            }
        })
        .await;
    }

    /// Two gateways' stores on one prefix: each decides only on etcd's current mark, never on
    /// what it saw before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_never_trust_their_views() {
        if !have_etcd("two_stores_never_trust_their_views") {
            return;
        }
        let (_dir, cluster) = cluster(1).await;
        let prefix = unique_prefix("views");
        let (a, b) = (
            store(cluster.endpoints(), &prefix).await,
            store(cluster.endpoints(), &prefix).await,
        );
        let k = key(Kind::Attestation);
        assert_eq!(a.check_and_record(&req(k, 10, 0, 1)).await, Ok(Outcome::Recorded));
        // b has no view: its guess "no mark" loses the compare, and it judges the real mark.
        let e = b
            .check_and_record(&req(k, 10, 0, 2))
            .await
            .expect_err("other bytes at a's mark");
        assert_eq!(e.reason(), RefusalReason::DifferentData);
        assert_eq!(b.check_and_record(&req(k, 11, 0, 2)).await, Ok(Outcome::Recorded));
        // a's view (10) is stale: a repeat of its own bytes at 10 is below b's 11 now.
        let e = a.check_and_record(&req(k, 10, 0, 1)).await.expect_err("below b's mark");
        assert_eq!(e.reason(), RefusalReason::Below);
        // …and other bytes at 11 are refused, though a's view said "record".
        let e = a.check_and_record(&req(k, 11, 0, 3)).await.expect_err("b signed 11");
        assert_eq!(e.reason(), RefusalReason::DifferentData);
        // b's identical repeat is answered from etcd, with the signature once kept (in the
        // background: the baker's answer never waits for it).
        b.record_signature(&req(k, 11, 0, 2), "edsigB")
            .await
            .expect("signature");
        eventually(Duration::from_secs(5), "signature kept", || async {
            let got = a.check_and_record(&req(k, 11, 0, 2)).await;
            anyhow::ensure!(got == Ok(Outcome::Repeat(Some("edsigB".into()))), "{got:?}");
            Ok(())
        })
        .await
        .expect("kept");
        // An operator set through one store is seen by the other.
        a.set(k, 100, 0).await.expect("set");
        let e = b
            .check_and_record(&req(k, 50, 0, 2))
            .await
            .expect_err("below the set mark");
        assert_eq!(e.reason(), RefusalReason::Below);
        assert!(!a
            .raise(
                k,
                signer_gateway::watermark::Mark {
                    level: 99,
                    round: 0,
                    digest: None,
                    signature: None
                }
            )
            .await
            .expect("raise"));
        assert_eq!(a.list().await.expect("list").len(), 1);
    }

    /// An empty prefix (a typo, a wiped cluster) takes no mark until the store is created
    /// there; a store whose marker disappears refuses at the next write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_prefix_takes_no_mark() {
        if !have_etcd("an_empty_prefix_takes_no_mark") {
            return;
        }
        let (_dir, cluster) = cluster(1).await;
        let prefix = unique_prefix("empty");
        let strict = EtcdSettings {
            create_if_missing: false,
            ..settings(cluster.endpoints(), &prefix)
        };
        let s = EtcdStore::connect(strict.clone(), StoreMetrics::new().expect("metrics"))
            .await
            .expect("connect");
        assert!(!s.health().healthy);
        assert!(s.health().last_error.unwrap_or_default().contains("watermark import"));
        let k = key(Kind::Block);
        let e = s.check_and_record(&req(k, 1, 0, 1)).await.expect_err("no store there");
        assert_eq!(cause(&e), Some(StoreCause::NotInitialized), "{e}");
        assert!(e.to_string().contains("marker"), "{e}");
        assert!(s.list().await.expect("list").is_empty());
        // Created by another store (the operator's import), found by the probe.
        let creator = store(cluster.endpoints(), &prefix).await;
        eventually(Duration::from_secs(5), "healthy", || async {
            anyhow::ensure!(s.health().healthy, "{:?}", s.health());
            Ok(())
        })
        .await
        .expect("finds the store");
        assert_eq!(s.check_and_record(&req(k, 1, 0, 1)).await, Ok(Outcome::Recorded));
        // Wiped: the next write refuses.
        cluster.members[0]
            .etcdctl(&["del", "--prefix", &prefix])
            .await
            .expect("wipe");
        let e = s.check_and_record(&req(k, 2, 0, 1)).await.expect_err("wiped");
        assert!(e.to_string().contains("marker"), "{e}");
        drop(creator);
    }

    /// Many writers of one mark at once: exactly one records; the others get a refusal by the
    /// rule (never a store error), however the races fall.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_winner_among_concurrent_writers() {
        if !have_etcd("one_winner_among_concurrent_writers") {
            return;
        }
        let (_dir, cluster) = cluster(1).await;
        let prefix = unique_prefix("race");
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(store(cluster.endpoints(), &prefix).await);
        }
        let k = key(Kind::Block);
        for level in 1..=50 {
            let tasks: Vec<_> = (0..16u8)
                .map(|i| {
                    let s = stores[usize::from(i) % stores.len()].clone();
                    tokio::spawn(async move { s.check_and_record(&req(k, level, 0, i + 1)).await })
                })
                .collect();
            let mut recorded = 0;
            for t in tasks {
                match t.await.expect("task") {
                    Ok(Outcome::Recorded) => recorded += 1,
                    Err(e) if e.reason() == RefusalReason::DifferentData => {}
                    other => panic!("level {level}: {other:?}"),
                }
            }
            assert_eq!(recorded, 1, "level {level}");
        }
    }

    /// A frozen link to etcd (the connection stays open, nothing answers): a refusal within
    /// the bound, the store unhealthy, and back by itself when the link heals. Also a store
    /// that starts while etcd cannot be reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_link_refuses_within_the_bound_and_recovers() {
        if !have_etcd("frozen_link_refuses_within_the_bound_and_recovers") {
            return;
        }
        let (_dir, cluster) = cluster(1).await;
        let link = FaultProxy::start(cluster.members[0].client_proxy.addr())
            .await
            .expect("proxy");
        let s = store(vec![format!("http://{}", link.addr())], &unique_prefix("frozen")).await;
        let k = key(Kind::Attestation);
        assert_eq!(s.check_and_record(&req(k, 1, 0, 1)).await, Ok(Outcome::Recorded));
        link.set_mode(ProxyMode::Blackhole);
        for level in 2..5 {
            let started = Instant::now();
            let e = s.check_and_record(&req(k, level, 0, 1)).await.expect_err("frozen");
            let took = started.elapsed();
            assert!(
                matches!(cause(&e), Some(StoreCause::Timeout | StoreCause::Unavailable)),
                "{e}"
            );
            assert!(took <= BOUND + SLACK, "refused after {took:?}");
        }
        assert!(!s.health().healthy, "{:?}", s.health());
        link.set_mode(ProxyMode::Pass);
        eventually(Duration::from_secs(15), "store healthy again", || async {
            anyhow::ensure!(s.health().healthy, "{:?}", s.health());
            Ok(())
        })
        .await
        .expect("recovers");
        assert_eq!(s.check_and_record(&req(k, 10, 0, 1)).await, Ok(Outcome::Recorded));

        // Starting while etcd is unreachable: up but unhealthy, refusing; healthy once it is.
        link.set_mode(ProxyMode::Reset);
        let late = store(vec![format!("http://{}", link.addr())], &unique_prefix("late")).await;
        assert!(!late.health().healthy);
        let e = late.check_and_record(&req(k, 1, 0, 1)).await.expect_err("unreachable");
        assert!(cause(&e).is_some(), "{e}");
        link.set_mode(ProxyMode::Pass);
        eventually(Duration::from_secs(15), "late store healthy", || async {
            anyhow::ensure!(late.health().healthy, "{:?}", late.health());
            Ok(())
        })
        .await
        .expect("connects");
        assert_eq!(late.check_and_record(&req(k, 1, 0, 1)).await, Ok(Outcome::Recorded));
    }

    /// TLS to a member that requires client certificates: a store with the CA and a client
    /// certificate records marks; without the certificate, or trusting another CA, it stays
    /// unhealthy and refuses, saying why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_with_a_client_certificate() {
        if !have_etcd("tls_with_a_client_certificate") {
            return;
        }
        let dir = tempfile::Builder::new().prefix("etcd-tls-").tempdir().expect("tempdir");
        let tls = match make_tls(&dir.path().join("pki")) {
            Ok(t) => t,
            Err(e) => return skip_unless_ci("tls_with_a_client_certificate", &e.to_string()),
        };
        let cluster = EtcdCluster::start_with(dir.path(), 1, Some(tls.clone()))
            .await
            .expect("etcd on TLS");
        let with = |tls: Option<signer_gateway::config::EtcdTls>| EtcdSettings {
            tls,
            ..settings(cluster.endpoints(), &unique_prefix("tls"))
        };
        let good = signer_gateway::config::EtcdTls {
            ca: tls.ca.clone(),
            identity: Some(tls.client.clone()),
        };
        let s = EtcdStore::connect(with(Some(good.clone())), StoreMetrics::new().expect("metrics"))
            .await
            .expect("connect");
        assert!(s.health().healthy, "{:?}", s.health());
        let k = key(Kind::Block);
        assert_eq!(s.check_and_record(&req(k, 1, 0, 1)).await, Ok(Outcome::Recorded));

        let no_cert = signer_gateway::config::EtcdTls {
            identity: None,
            ..good.clone()
        };
        let other_ca = make_tls(&dir.path().join("other")).expect("another CA");
        let wrong_ca = signer_gateway::config::EtcdTls {
            ca: other_ca.ca,
            ..good
        };
        for (what, t) in [("no client certificate", no_cert), ("another CA", wrong_ca)] {
            let s = EtcdStore::connect(with(Some(t)), StoreMetrics::new().expect("metrics"))
                .await
                .expect("connect");
            assert!(!s.health().healthy, "{what}: {:?}", s.health());
            let e = s.check_and_record(&req(k, 1, 0, 1)).await.expect_err(what);
            assert!(cause(&e).is_some(), "{what}: {e}");
        }
    }

    /// etcd's user/password auth: the configured user records marks; a wrong password is an
    /// unhealthy store that refuses.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_and_password() {
        if !have_etcd("user_and_password") {
            return;
        }
        let (dir, cluster) = cluster(1).await;
        let m = &cluster.members[0];
        m.etcdctl(&["user", "add", "root:root-pw"]).await.expect("root user");
        m.etcdctl(&["user", "add", "gateway:gw-pw"])
            .await
            .expect("gateway user");
        m.etcdctl(&["role", "add", "marks"]).await.expect("role");
        m.etcdctl(&[
            "role",
            "grant-permission",
            "marks",
            "--prefix=true",
            "readwrite",
            "/auth/",
        ])
        .await
        .expect("grant");
        m.etcdctl(&["user", "grant-role", "gateway", "marks"])
            .await
            .expect("grant role");
        m.etcdctl(&["auth", "enable"]).await.expect("auth enable");
        let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
        std::fs::write(&good, "gw-pw\n").expect("password file");
        std::fs::write(&bad, "nope\n").expect("password file");
        let with = |file: &std::path::Path| EtcdSettings {
            auth: Some(("gateway".into(), file.to_path_buf())),
            ..settings(cluster.endpoints(), "/auth/")
        };
        let s = EtcdStore::connect(with(&good), StoreMetrics::new().expect("metrics"))
            .await
            .expect("connect");
        assert!(s.health().healthy, "{:?}", s.health());
        let k = key(Kind::Attestation);
        assert_eq!(s.check_and_record(&req(k, 5, 0, 1)).await, Ok(Outcome::Recorded));
        let s = EtcdStore::connect(with(&bad), StoreMetrics::new().expect("metrics"))
            .await
            .expect("connect");
        assert!(!s.health().healthy, "{:?}", s.health());
        let e = s.check_and_record(&req(k, 6, 0, 1)).await.expect_err("wrong password");
        assert!(cause(&e).is_some(), "{e}");
    }

    // ---- gateways on etcd -----------------------------------------------------------------

    /// One gateway process with its own signer (key `seed(key_seed)`) and the etcd store.
    struct Replica {
        gw: Gateway,
        signer: TestSignerHandle,
        pkh: Pkh,
        client: Client,
    }

    impl Replica {
        async fn start(endpoints: Vec<String>, prefix: &str, key_seed: u8) -> Replica {
            let signer = TestSigner::spawn(TestSignerOptions {
                seeds: vec![seed(key_seed)],
                ..TestSignerOptions::default()
            })
            .await
            .expect("signer");
            let yaml = GatewayConfig::new(&[("signer", signer.addr())])
                .with_etcd(endpoints, prefix, &format!("{}ms", BOUND.as_millis()))
                .to_yaml();
            let gw = Gateway::start(&yaml).await.expect("gateway");
            gw.wait_signers_up(&["signer"], Duration::from_secs(10))
                .await
                .expect("signer up");
            let pkh = signer.pkhs()[0];
            Replica {
                gw,
                signer,
                pkh,
                client: Client::new().with_timeout(Duration::from_secs(10)),
            }
        }

        async fn sign(&self, payload: &[u8]) -> (StatusCode, Value) {
            self.client
                .sign(self.gw.api, "", self.pkh, payload)
                .await
                .expect("an HTTP answer")
        }

        async fn ready(&self) -> bool {
            let (code, _) = self.client.get(&self.gw.admin_url("/readyz")).await.expect("readyz");
            code == StatusCode::OK
        }
    }

    /// The mark etcd holds for (TEST_CHAIN, pkh, attestation), read by a store of the test's.
    async fn mark_in_etcd(endpoints: Vec<String>, prefix: &str, pkh: Pkh) -> signer_gateway::watermark::Mark {
        let marks = store(endpoints, prefix).await.list().await.expect("list");
        let k = MarkKey {
            chain: ChainId(TEST_CHAIN),
            pkh,
            kind: Kind::Attestation,
        };
        marks
            .into_iter()
            .find(|(mk, _)| *mk == k)
            .map(|(_, m)| m)
            .expect("a mark in etcd")
    }

    /// `n` gateways, one baker each, same key, different bytes for every level at the same
    /// moment: exactly one valid signature per level, and etcd holds the winner's mark.
    async fn split_brain(n: usize, levels: i32) {
        let (_dir, cluster) = cluster(3).await;
        let prefix = unique_prefix("split");
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(Arc::new(Replica::start(cluster.endpoints(), &prefix, 7).await));
        }
        let pk = replicas[0].signer.public_keys()[0].clone();
        let mut last_winner = None;
        for level in 1..=levels {
            let barrier = Arc::new(tokio::sync::Barrier::new(n));
            let tasks: Vec<_> = replicas
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (r, barrier) = (r.clone(), barrier.clone());
                    let payload = attestation(TEST_CHAIN, level, 0, u8::try_from(i + 1).expect("few"));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let answer = r.sign(&payload).await;
                        (payload, answer)
                    })
                })
                .collect();
            let mut signed = Vec::new();
            for t in tasks {
                let (payload, (code, body)) = t.await.expect("baker");
                match code {
                    StatusCode::OK => {
                        let sig = body["signature"].as_str().expect("signature");
                        pk.verify(&payload, sig).expect("a valid signature");
                        signed.push(payload);
                    }
                    StatusCode::CONFLICT => {
                        assert_eq!(body[0]["id"], "signer_gateway.different_data", "level {level}: {body}");
                    }
                    other => panic!("level {level}: {other} {body}"),
                }
            }
            assert_eq!(signed.len(), 1, "level {level}: {} signatures", signed.len());
            last_winner = signed.pop();
        }
        let mark = mark_in_etcd(cluster.endpoints(), &prefix, replicas[0].pkh).await;
        assert_eq!((mark.level, mark.round), (levels, 0));
        assert_eq!(
            mark.digest,
            last_winner.map(|p| blake2b_256(&p)),
            "etcd holds the winner's bytes"
        );
        // Every gateway's signer signed only what its gateway released.
        let total: u64 = replicas.iter().map(|r| r.signer.stats().signs).sum();
        assert_eq!(total, u64::try_from(levels).expect("levels"), "signer calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_brain_two_gateways_one_signature_per_level() {
        if have_etcd("split_brain_two_gateways") {
            split_brain(2, 1000).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_brain_three_gateways_one_signature_per_level() {
        if have_etcd("split_brain_three_gateways") {
            split_brain(3, 1000).await;
        }
    }

    /// What a baker saw while sending one request every `EVERY`.
    #[derive(Default, Debug)]
    struct Seen {
        ok: Vec<(Instant, i32)>,
        refused: Vec<(Instant, Duration, StatusCode, String)>,
    }

    const EVERY: Duration = Duration::from_millis(100);

    /// A baker signing attestations at increasing levels until `stop`.
    fn baker(r: Arc<Replica>, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<Seen> {
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut level = 0;
            while !stop.is_cancelled() {
                level += 1;
                let started = Instant::now();
                let (code, body) = r.sign(&attestation(TEST_CHAIN, level, 0, 1)).await;
                if code == StatusCode::OK {
                    seen.ok.push((Instant::now(), level));
                } else {
                    assert_error_trace(&body).expect("a JSON error trace");
                    seen.refused.push((started, started.elapsed(), code, body.to_string()));
                }
                tokio::time::sleep(EVERY).await;
            }
            seen
        })
    }

    /// A gateway cut from every etcd member (its links frozen) refuses every request within
    /// the bound while the other keeps signing; healed, it signs again without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitioned_gateway_refuses_while_the_other_signs() {
        if !have_etcd("partitioned_gateway_refuses_while_the_other_signs") {
            return;
        }
        let (_dir, cluster) = cluster(3).await;
        let prefix = unique_prefix("partition");
        let mut links = Vec::new();
        for m in &cluster.members {
            links.push(FaultProxy::start(m.client_proxy.addr()).await.expect("link"));
        }
        let cut_endpoints = links.iter().map(|l| format!("http://{}", l.addr())).collect();
        let a = Arc::new(Replica::start(cut_endpoints, &prefix, 21).await);
        let b = Arc::new(Replica::start(cluster.endpoints(), &prefix, 22).await);
        let stop = tokio_util::sync::CancellationToken::new();
        let (bakes_a, bakes_b) = (baker(a.clone(), stop.clone()), baker(b.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;

        let cut = Instant::now();
        for l in &links {
            l.set_mode(ProxyMode::Blackhole);
        }
        eventually(BOUND + SLACK + Duration::from_secs(2), "a not ready", || async {
            anyhow::ensure!(!a.ready().await, "a still ready");
            Ok(())
        })
        .await
        .expect("/readyz follows");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let heal = Instant::now();
        for l in &links {
            l.set_mode(ProxyMode::Pass);
        }
        let back = eventually(Duration::from_secs(20), "a signs again", || async {
            // Another kind: its own mark, out of the baker's way.
            let (code, _) = a.sign(&preattestation(TEST_CHAIN, 1_000_000, 0, 1)).await;
            anyhow::ensure!(code == StatusCode::OK, "{code}");
            Ok(Instant::now())
        })
        .await
        .expect("a signs again without a restart");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        let (seen_a, seen_b) = (bakes_a.await.expect("a"), bakes_b.await.expect("b"));

        // b never failed.
        assert!(seen_b.refused.is_empty(), "b refused: {:?}", seen_b.refused);
        assert!(seen_b.ok.len() >= 40, "b signed only {}", seen_b.ok.len());
        // a: nothing signed between the cut and the heal; every refusal within the bound.
        let during: Vec<_> = seen_a
            .ok
            .iter()
            .filter(|(t, _)| *t > cut + BOUND && *t < heal)
            .collect();
        assert!(during.is_empty(), "a signed while cut: {during:?}");
        for (at, took, code, body) in &seen_a.refused {
            assert!(*took <= BOUND + SLACK, "a refusal took {took:?}");
            assert!(*at + *took >= cut, "refused before the cut: {code} {body}");
            assert!(body.contains("temporary"), "{body}");
        }
        let first_refusal = seen_a
            .refused
            .iter()
            .map(|(at, took, ..)| *at + *took)
            .min()
            .expect("a was refused");
        eprintln!(
            "partition: cut -> first refusal {:?}; heal -> first signature {:?}; a refused {} requests",
            first_refusal - cut,
            back - heal,
            seen_a.refused.len()
        );
        assert!(a.ready().await, "a ready again");
    }

    /// What happens to the etcd leader mid-stream.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum LeaderFault {
        /// SIGKILL: its connections reset.
        Killed,
        /// SIGSTOP: its connections stay open and silent, as when its zone's link dies.
        Frozen,
    }

    /// The etcd leader fails during a stream of signatures (one every 100 ms, for 8 s): the
    /// others elect a leader and signing resumes within the bound and an election; no request
    /// waits past the bound; nothing released is signed again with other bytes, and no mark is
    /// lost. Returns the cluster, the replica and the highest released level.
    async fn leader_fails_during_a_stream(fault: LeaderFault) -> (TempDir, EtcdCluster, usize, Arc<Replica>, i32) {
        let (dir, mut cluster) = cluster(3).await;
        let prefix = unique_prefix("leader");
        let r = Arc::new(Replica::start(cluster.endpoints(), &prefix, 31).await);
        let stop = tokio_util::sync::CancellationToken::new();
        let bakes = baker(r.clone(), stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = cluster.leader().await.expect("leader");
        let failed = Instant::now();
        match fault {
            LeaderFault::Killed => cluster.members[leader].kill(),
            LeaderFault::Frozen => cluster.members[leader].freeze().expect("SIGSTOP"),
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop.cancel();
        let seen = bakes.await.expect("baker");
        if fault == LeaderFault::Frozen {
            cluster.members[leader].thaw().expect("SIGCONT");
        }
        let resumed = seen
            .ok
            .iter()
            .find(|(t, _)| *t > failed)
            .map(|(t, _)| *t - failed)
            .expect("signing resumed after the leader failed");
        let signed = seen.ok.iter().filter(|(t, _)| *t > failed).count();
        eprintln!(
            "leader {fault:?}: first signature {resumed:?} after; {signed} signed and {} refused over 8 s",
            seen.refused.len()
        );
        assert!(
            resumed <= BOUND + SLACK + Duration::from_secs(2),
            "resumed after {resumed:?}"
        );
        // Every refusal was a temporary store refusal, answered within the bound.
        for (_, took, code, body) in &seen.refused {
            assert!(*took <= BOUND + SLACK, "a request waited {took:?}: {code} {body}");
            assert!(body.contains("watermark_store"), "{code} {body}");
        }
        // No lost mark: the highest released level is in etcd, and released levels are
        // refused with other bytes.
        let top = seen.ok.iter().map(|(_, l)| *l).max().expect("released");
        let mark = mark_in_etcd(cluster.endpoints(), &prefix, r.pkh).await;
        assert!(mark.level >= top, "mark {} below released {top}", mark.level);
        for (_, level) in seen.ok.iter().rev().take(10) {
            let (code, body) = r.sign(&attestation(TEST_CHAIN, *level, 0, 9)).await;
            assert_eq!(code, StatusCode::CONFLICT, "level {level}: {body}");
        }
        (dir, cluster, leader, r, top)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_leader_killed_during_a_stream() {
        if !have_etcd("etcd_leader_killed_during_a_stream") {
            return;
        }
        let (_dir, mut cluster, leader, r, top) = leader_fails_during_a_stream(LeaderFault::Killed).await;
        // The killed member comes back and catches up.
        cluster.members[leader].restart().await.expect("restart");
        let (code, body) = r.sign(&attestation(TEST_CHAIN, top + 100, 0, 1)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_leader_frozen_during_a_stream() {
        if have_etcd("etcd_leader_frozen_during_a_stream") {
            leader_fails_during_a_stream(LeaderFault::Frozen).await;
        }
    }

    /// etcd down entirely: every request refused within the bound, the gateway stays up
    /// (`/healthz` 200, `/readyz` 503) and serves again by itself when etcd returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_down_entirely_refuses_and_recovers() {
        if !have_etcd("etcd_down_entirely_refuses_and_recovers") {
            return;
        }
        let (_dir, mut cluster) = cluster(3).await;
        let prefix = unique_prefix("down");
        let r = Replica::start(cluster.endpoints(), &prefix, 41).await;
        let (code, body) = r.sign(&attestation(TEST_CHAIN, 1, 0, 1)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        cluster.kill_all();
        for level in 2..6 {
            let started = Instant::now();
            let (code, body) = r.sign(&attestation(TEST_CHAIN, level, 0, 1)).await;
            let took = started.elapsed();
            assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
            assert_eq!(body[0]["id"], "signer_gateway.watermark_store", "{body}");
            assert_eq!(body[0]["kind"], "temporary", "{body}");
            assert!(took <= BOUND + SLACK, "refused after {took:?}");
        }
        let (code, _) = r.client.get(&r.gw.admin_url("/healthz")).await.expect("healthz");
        assert_eq!(code, StatusCode::OK);
        assert!(!r.ready().await, "ready with etcd down");
        cluster.restart_all().await.expect("etcd back");
        let (code, body) = eventually(Duration::from_secs(20), "signs again", || async {
            let (code, body) = r.sign(&attestation(TEST_CHAIN, 10, 0, 1)).await;
            anyhow::ensure!(code == StatusCode::OK, "{code} {body}");
            Ok((code, body))
        })
        .await
        .expect("serves again without a restart");
        assert_eq!(code, StatusCode::OK, "{body}");
        eventually(Duration::from_secs(5), "ready", || async {
            anyhow::ensure!(r.ready().await);
            Ok(())
        })
        .await
        .expect("ready again");
    }

    /// The gateway and its (single) etcd member killed with SIGKILL at once, mid-stream, as in
    /// a power cut: after both restart, nothing released is signed again with other bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_of_gateway_and_etcd_mid_stream() {
        if !have_etcd("kill_9_of_gateway_and_etcd_mid_stream") {
            return;
        }
        let (_dir, mut cluster) = cluster(1).await;
        let prefix = unique_prefix("kill9");
        let mut r = Replica::start(cluster.endpoints(), &prefix, 51).await;
        let api = r.gw.api;
        let pkh = r.pkh;
        let released: Arc<Mutex<Vec<i32>>> = Arc::default();
        let stream = {
            let released = released.clone();
            tokio::spawn(async move {
                let client = Client::new().with_timeout(Duration::from_secs(5));
                for level in 1.. {
                    match client.sign(api, "", pkh, &attestation(TEST_CHAIN, level, 0, 1)).await {
                        Ok((StatusCode::OK, _)) => released.lock().expect("released").push(level),
                        _ => return,
                    }
                }
            })
        };
        eventually(Duration::from_secs(10), "a few signatures", || async {
            anyhow::ensure!(released.lock().expect("released").len() >= 20);
            Ok(())
        })
        .await
        .expect("stream");
        r.gw.kill();
        cluster.members[0].kill();
        let _ = stream.await;
        cluster.members[0].restart().await.expect("etcd restart");
        r.gw.restart().await.expect("gateway restart");
        let released = released.lock().expect("released").clone();
        let top = *released.iter().max().expect("released");
        for level in released.iter().rev().take(5).chain([&top]) {
            let (code, body) = r.sign(&attestation(TEST_CHAIN, *level, 0, 2)).await;
            assert_eq!(code, StatusCode::CONFLICT, "level {level} signed again: {body}");
        }
        let (code, body) = r.sign(&attestation(TEST_CHAIN, top + 2, 0, 2)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }

    // ---- import --------------------------------------------------------------------------

    /// `signer-gateway watermark …` with this config; (status, stdout, stderr).
    async fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(testkit::harness::gateway_bin().expect("gateway binary"))
            .arg("--config")
            .arg(config)
            .arg("watermark")
            .args(args)
            .output()
            .await
            .expect("run the CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Marks from `octez-signer -W`'s files, and from an export of the file store, imported
    /// into etcd: requests at or below them are refused, above them signed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn import_octez_marks_and_a_file_store_export() {
        if !have_etcd("import_octez_marks_and_a_file_store_export") {
            return;
        }
        let (dir, cluster) = cluster(1).await;
        let prefix = unique_prefix("import");
        let signer = TestSigner::spawn(TestSignerOptions {
            seeds: vec![seed(61)],
            ..TestSignerOptions::default()
        })
        .await
        .expect("signer");
        let pkh = signer.pkhs()[0];
        // No `create_if_missing`: an empty prefix must be imported into first.
        let config = GatewayConfig::new(&[("signer", signer.addr())])
            .with_etcd(cluster.endpoints(), &prefix, "2s")
            .to_yaml()
            .replace("create_if_missing: true", "create_if_missing: false")
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, &config).expect("config");
        let gw = Gateway::start(&config).await.expect("gateway");
        gw.wait_signers_up(&["signer"], Duration::from_secs(10))
            .await
            .expect("up");
        let client = Client::new();
        let (code, body) = client
            .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 1, 0, 1))
            .await
            .expect("sign");
        assert_eq!(
            code,
            StatusCode::INTERNAL_SERVER_ERROR,
            "an empty prefix took a mark: {body}"
        );
        assert!(body.to_string().contains("watermark import"), "{body}");
        let (code, _) = client.get(&gw.admin_url("/readyz")).await.expect("readyz");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);

        // octez-signer's base dir: its files, in octez's encoding.
        let octez = dir.path().join("octez");
        std::fs::create_dir(&octez).expect("octez dir");
        let digest = hex::encode([7u8; 32]);
        let chain = ChainId(TEST_CHAIN).to_string();
        let file = |level: i32, round: i32| {
            format!(r#"{{"{chain}": {{"{pkh}": {{"level": {level}, "round": {round}, "hash": "{digest}"}}}}}}"#)
        };
        std::fs::write(octez.join("attestation_high_watermarks"), file(500, 0)).expect("write");
        std::fs::write(octez.join("preattestation_high_watermarks"), file(500, 0)).expect("write");
        std::fs::write(octez.join("block_high_watermarks"), file(499, 1)).expect("write");
        let octez_arg = octez.display().to_string();
        let (code, out, err) = cli(&config_path, &["import", "--octez", &octez_arg]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("3 marks raised"), "{out}");
        // Importing again raises nothing.
        let (code, out, err) = cli(&config_path, &["import", "--octez", &octez_arg]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("0 marks raised, 3 kept"), "{out}");

        // The running gateway finds the store by itself and holds the imported marks.
        eventually(Duration::from_secs(10), "ready after the import", || async {
            let (code, _) = client.get(&gw.admin_url("/readyz")).await?;
            anyhow::ensure!(code == StatusCode::OK, "{code}");
            Ok(())
        })
        .await
        .expect("ready");
        for (level, want) in [
            (499, StatusCode::CONFLICT),
            (500, StatusCode::CONFLICT),
            (501, StatusCode::OK),
        ] {
            let (code, body) = client
                .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, level, 0, 1))
                .await
                .expect("sign");
            assert_eq!(code, want, "level {level}: {body}");
        }
        drop(gw);

        // The file store's export, imported: raises only what is higher.
        let export = dir.path().join("export.json");
        let marks = serde_json::json!({"version": 1, "marks": [
            {"chain": chain, "pkh": pkh.to_string(), "kind": "attestation", "level": 400, "round": 0, "digest": null, "signature": null},
            {"chain": chain, "pkh": pkh.to_string(), "kind": "block", "level": 900, "round": 0, "digest": null, "signature": null},
        ]});
        std::fs::write(&export, marks.to_string()).expect("export");
        let (code, out, err) = cli(&config_path, &["import", &export.display().to_string()]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("1 marks raised, 1 kept"), "{out}");
        let (code, out, err) = cli(&config_path, &["export"]).await;
        assert_eq!(code, 0, "{err}");
        let exported: Value = serde_json::from_str(&out).expect("export JSON");
        let levels: Vec<_> = exported["marks"]
            .as_array()
            .expect("marks")
            .iter()
            .map(|m| {
                (
                    m["kind"].as_str().unwrap_or_default().to_string(),
                    m["level"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        assert!(levels.contains(&("block".into(), 900)), "{levels:?}");
        assert!(levels.contains(&("attestation".into(), 501)), "{levels:?}");
    }
}
