//! The test signer on its own: protocol, keys, fault modes, control endpoints, and the
//! `test-signer` binary through the harness. No gateway involved.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use signer_gateway::tezos::PublicKey;
use testkit::harness::{
    assert_error_trace, attestation, eventually, Client, SignerControl, TestSignerProcess, TEST_CHAIN,
};
use testkit::test_signer::{key_from_seed, seed, Mode, TestSigner, TestSignerHandle, TestSignerOptions};

async fn spawn(mode: Mode) -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(1), seed(2)],
        mode,
        ..Default::default()
    })
    .await
    .expect("spawn test signer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_answers_and_signatures_verify() {
    let s = spawn(Mode::Ok).await;
    let c = Client::new();
    let base = format!("http://{}", s.addr());
    assert_eq!(s.pkhs(), vec![key_from_seed(1).pkh(), key_from_seed(2).pkh()]);

    let (code, body) = c.get(&format!("{base}/authorized_keys")).await.unwrap();
    assert_eq!((code, body), (StatusCode::OK, serde_json::json!({})));

    for (pkh, pk) in s.pkhs().iter().zip(s.public_keys()) {
        let (code, body) = c.get(&format!("{base}/keys/{pkh}")).await.unwrap();
        assert_eq!(code, StatusCode::OK);
        let got: PublicKey = body["public_key"].as_str().unwrap().parse().unwrap();
        assert_eq!(got, pk);
        assert_eq!(got.hash(), *pkh);

        let msg = attestation(TEST_CHAIN, 10, 0, 1);
        let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        let sig = body["signature"].as_str().unwrap();
        assert!(sig.starts_with("edsig"));
        pk.verify(&msg, sig).unwrap();
        assert!(pk.verify(&attestation(TEST_CHAIN, 10, 0, 2), sig).is_err());
    }

    // Unknown key, bad bodies.
    let other = key_from_seed(9).pkh();
    let (code, body) = c.get(&format!("{base}/keys/{other}")).await.unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, _) = c.sign(s.addr(), "", other, b"\x13").await.unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND);
    let pkh = s.pkhs()[0];
    for bad in ["", "13ab", "\"zz\"", "\"131\"", "\"\""] {
        let r = c
            .raw(Method::POST, &format!("{base}/keys/{pkh}"), bad.to_string(), &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_error_trace(&r.value()).unwrap();
    }

    // Chunked body with the query string octez sends.
    let msg = attestation(TEST_CHAIN, 11, 0, 1);
    let body = format!("\"{}\"\n", hex::encode(&msg));
    let (a, b) = body.split_at(20);
    let r = c
        .raw_chunked(
            Method::POST,
            &format!("{base}/keys/{pkh}?version=2"),
            vec![Bytes::from(a.to_string()), Bytes::from(b.to_string())],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    s.public_keys()[0]
        .verify(&msg, r.value()["signature"].as_str().unwrap())
        .unwrap();

    let st = s.stats();
    assert_eq!(st.signs, 3);
    assert_eq!(st.sign_requests, 3 + 1 + 5);
    assert_eq!(st.last_sign_hex.as_deref(), Some(hex::encode(&msg).as_str()));
    assert_eq!(st.last_query.as_deref(), Some("version=2"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_modes() {
    let s = spawn(Mode::Ok).await;
    let c = Client::new().with_timeout(Duration::from_secs(2));
    let ctl = SignerControl::new(s.addr());
    let pkh = s.pkhs()[0];
    let pk = s.public_keys()[0].clone();
    let health = format!("http://{}/authorized_keys", s.addr());
    let msg = attestation(TEST_CHAIN, 5, 0, 1);

    // fail: 500 + trace everywhere.
    ctl.set_mode(Mode::Fail).await.unwrap();
    assert_eq!(s.mode(), Mode::Fail);
    let (code, body) = c.get(&health).await.unwrap();
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error_trace(&body).unwrap();
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error_trace(&body).unwrap();

    // fail-sign: reads fine, signing 500.
    s.set_mode(Mode::FailSign);
    assert_eq!(c.get(&health).await.unwrap().0, StatusCode::OK);
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error_trace(&body).unwrap();

    // refuse: 403 on POST.
    s.set_mode(Mode::Refuse);
    assert_eq!(c.get(&health).await.unwrap().0, StatusCode::OK);
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_error_trace(&body).unwrap();

    // wrong-sig: well-formed, does not verify.
    s.set_mode(Mode::WrongSig);
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    let sig = body["signature"].as_str().unwrap();
    signer_gateway::tezos::check_signature_shape(sig).unwrap();
    assert!(pk.verify(&msg, sig).is_err());

    // slow: answers after the delay.
    s.set_mode(Mode::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    pk.verify(&msg, body["signature"].as_str().unwrap()).unwrap();

    // hang: never answers, health path included; control still works.
    s.set_mode(Mode::Hang);
    let short = Client::new().with_timeout(Duration::from_millis(300));
    assert!(short.get(&health).await.is_err());
    assert!(short.sign(s.addr(), "", pkh, &msg).await.is_err());
    let before = ctl.stats().await.unwrap();
    assert_eq!(before.mode, "hang");
    ctl.set_mode(Mode::Ok).await.unwrap();
    let (code, body) = c.sign(s.addr(), "", pkh, &msg).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    pk.verify(&msg, body["signature"].as_str().unwrap()).unwrap();

    // Control: bad mode, reset.
    let r = c
        .raw(Method::PUT, &format!("http://{}/_control/mode", s.addr()), "bogus", &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let st = ctl.stats().await.unwrap();
    assert_eq!(st.signs, 3, "wrong-sig, slow and ok signed: {st:?}");
    ctl.reset().await.unwrap();
    let st = ctl.stats().await.unwrap();
    assert_eq!((st.signs, st.requests, st.mode.as_str()), (0, 0, "ok"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_port_and_drops_hung_requests() {
    let s = spawn(Mode::Hang).await;
    let addr = s.addr();
    let pkh = s.pkhs()[0];
    let c = Client::new().with_timeout(Duration::from_secs(5));
    let pending = tokio::spawn(async move { c.sign(addr, "", pkh, b"\x13\x00").await });
    // Wait until the hung request has been read.
    let ctl = SignerControl::new(addr);
    eventually(Duration::from_secs(5), "request read", || async {
        anyhow::ensure!(ctl.stats().await?.sign_requests == 1);
        Ok(())
    })
    .await
    .unwrap();
    let t = Instant::now();
    s.shutdown().await;
    // The hung request fails promptly (connection dropped), not after the client timeout.
    assert!(pending.await.unwrap().is_err());
    assert!(t.elapsed() < Duration::from_secs(2));
    let again = TestSigner::spawn(TestSignerOptions {
        listen: addr,
        ..Default::default()
    })
    .await
    .expect("same port again");
    assert_eq!(again.addr(), addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_restarts_on_the_same_port() {
    let mut p = TestSignerProcess::start(&[seed(4), seed(5)], Mode::Ok).await.unwrap();
    assert_eq!(p.pkhs(), &[key_from_seed(4).pkh(), key_from_seed(5).pkh()]);
    let c = Client::fresh_connections();
    let msg = attestation(TEST_CHAIN, 1, 0, 1);
    let (code, body) = c.sign(p.addr(), "", p.pkhs()[1], &msg).await.unwrap();
    assert_eq!(code, StatusCode::OK);
    key_from_seed(5)
        .public_key()
        .verify(&msg, body["signature"].as_str().unwrap())
        .unwrap();
    p.set_mode(Mode::Refuse).await.unwrap();
    assert_eq!(p.stats().await.unwrap().mode, "refuse");

    let addr = p.addr();
    p.kill();
    assert!(!p.is_running());
    assert!(c.get(&format!("http://{addr}/authorized_keys")).await.is_err());
    p.restart(Mode::FailSign).await.unwrap();
    assert_eq!(p.addr(), addr);
    let st = p.stats().await.unwrap();
    assert_eq!((st.signs, st.mode.as_str()), (0, "fail-sign"));

    let status = p.terminate(Duration::from_secs(5)).await.unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
