//! Bad requests get the right status and an octez error trace (a JSON array), never reach
//! the signer, and leave the gateway serving. Also: policy refusals, the path prefix, and
//! what valid requests carry through (chunked bodies, the `version` query).
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use testkit::harness::{
    assert_error_trace, attestation, block, generic_operation, Client, Gateway, GatewayConfig, Reply, TEST_CHAIN,
};
use testkit::test_signer::{key_from_seed, seed, TestSigner, TestSignerHandle, TestSignerOptions};

async fn signer(seeds: &[u8]) -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        seeds: seeds.iter().map(|n| seed(*n)).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn check(case: &str, reply: &Reply, want: StatusCode) {
    assert_eq!(reply.status, want, "{case}: {}", reply.text());
    let body = reply
        .json()
        .unwrap_or_else(|| panic!("{case}: body is not JSON: {:?}", reply.text()));
    assert_error_trace(&body).unwrap_or_else(|e| panic!("{case}: {e:#}"));
}

fn json_hex(bytes: &[u8]) -> String {
    format!("\"{}\"\n", hex::encode(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_a_trace() {
    let s = signer(&[1]).await;
    let pkh = s.pkhs()[0];
    let pk = s.public_keys()[0].clone();
    let gw = Gateway::start(&GatewayConfig::new(&[("primary", s.addr())]).to_yaml())
        .await
        .unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let c = Client::new();
    let url = gw.api_url(&format!("/keys/{pkh}"));
    let post = |body: String| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.raw(Method::POST, &url, body, &[]).await.unwrap() }
    };
    let valid = attestation(TEST_CHAIN, 5, 0, 1);

    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("bad JSON", "not json".into(), StatusCode::BAD_REQUEST),
        ("JSON but not a string", "{\"a\":1}".into(), StatusCode::BAD_REQUEST),
        ("bad hex", "\"zz13\"".into(), StatusCode::BAD_REQUEST),
        ("odd-length hex", "\"131\"".into(), StatusCode::BAD_REQUEST),
        ("empty body", String::new(), StatusCode::BAD_REQUEST),
        ("empty string", "\"\"".into(), StatusCode::BAD_REQUEST),
        (
            "unknown magic byte",
            json_hex(&[0xff, 0, 1, 2]),
            StatusCode::BAD_REQUEST,
        ),
        ("obsolete 0x01 block", json_hex(&[0x01; 80]), StatusCode::BAD_REQUEST),
        (
            "obsolete 0x02 endorsement",
            json_hex(&[0x02; 80]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "0x04 authentication envelope",
            json_hex(&[0x04; 40]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "attestation of the wrong length",
            json_hex(&valid[..79]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "generic 0x03 not allowed",
            json_hex(&generic_operation(1)),
            StatusCode::FORBIDDEN,
        ),
        (
            "packed 0x05 not allowed",
            json_hex(&[0x05, 0x01, 0x00]),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (case, body, want) in cases {
        check(case, &post(body).await, want);
    }

    // Oversized, with Content-Length and chunked. Fresh connections: the gateway closes the
    // connection after a 413 (the body is left unread), so a pooled one would be stale.
    let fresh = Client::fresh_connections();
    let big = format!("\"13{}\"", "00".repeat(40_000));
    let r = fresh.raw(Method::POST, &url, big.clone(), &[]).await.unwrap();
    check("oversized body", &r, StatusCode::PAYLOAD_TOO_LARGE);
    let (a, b) = big.split_at(big.len() / 2);
    let r = fresh
        .raw_chunked(
            Method::POST,
            &url,
            vec![Bytes::from(a.to_string()), Bytes::from(b.to_string())],
            &[],
        )
        .await
        .unwrap();
    check("oversized chunked body", &r, StatusCode::PAYLOAD_TOO_LARGE);

    // Paths and methods.
    let unknown = key_from_seed(99).pkh();
    let r = c
        .raw(
            Method::POST,
            &gw.api_url(&format!("/keys/{unknown}")),
            json_hex(&valid),
            &[],
        )
        .await
        .unwrap();
    check("unknown key (sign)", &r, StatusCode::NOT_FOUND);
    let r = c
        .raw(Method::GET, &gw.api_url(&format!("/keys/{unknown}")), "", &[])
        .await
        .unwrap();
    check("unknown key (public key)", &r, StatusCode::NOT_FOUND);
    let r = c
        .raw(Method::POST, &gw.api_url("/keys/tz1notakey"), json_hex(&valid), &[])
        .await
        .unwrap();
    check("malformed key hash in the path", &r, StatusCode::BAD_REQUEST);
    for path in ["/nope", "/keys", "/", "/keys/"] {
        let r = c.raw(Method::GET, &gw.api_url(path), "", &[]).await.unwrap();
        let want = if path == "/keys/" {
            r.status
        } else {
            StatusCode::NOT_FOUND
        };
        check(&format!("unknown path {path}"), &r, want);
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
    }
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let r = c.raw(method.clone(), &url, json_hex(&valid), &[]).await.unwrap();
        check(&format!("{method} /keys/<pkh>"), &r, StatusCode::METHOD_NOT_ALLOWED);
    }
    let r = c
        .raw(Method::POST, &gw.api_url("/authorized_keys"), "", &[])
        .await
        .unwrap();
    check("POST /authorized_keys", &r, StatusCode::METHOD_NOT_ALLOWED);

    assert_eq!(s.stats().signs, 0, "no bad request reached the signer");

    // Still serving, on the same keep-alive client.
    let r = post(json_hex(&valid)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    pk.verify(&valid, r.value()["signature"].as_str().unwrap()).unwrap();
    let (status, body) = c.get(&gw.api_url(&format!("/keys/{pkh}"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["public_key"].as_str(), Some(pk.to_string().as_str()));
    assert_eq!(s.stats().signs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_policy() {
    let s = signer(&[1, 2]).await;
    let (a, b) = (s.pkhs()[0], s.pkhs()[1]);
    let mut cfg = GatewayConfig::new(&[("primary", s.addr())]);
    // Key a: attestations and generic operations only. Key b: the defaults.
    cfg.policy_keys = format!("{{ {a}: {{ kinds: [attestation], allow_generic: true, allow_packed: false }} }}");
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let c = Client::new();
    let blk = block(TEST_CHAIN, 10, 0, 1).unwrap();
    let packed = [0x05, 0x01, 0x00];
    let cases: [(&str, _, &[u8], StatusCode); 8] = [
        ("a: attestation", a, &attestation(TEST_CHAIN, 10, 0, 1), StatusCode::OK),
        ("a: generic", a, &generic_operation(1), StatusCode::OK),
        ("a: block (kind not allowed)", a, &blk, StatusCode::FORBIDDEN),
        ("a: packed", a, &packed, StatusCode::FORBIDDEN),
        ("b: block", b, &blk, StatusCode::OK),
        ("b: attestation", b, &attestation(TEST_CHAIN, 10, 0, 1), StatusCode::OK),
        ("b: generic", b, &generic_operation(1), StatusCode::FORBIDDEN),
        ("b: packed", b, &packed, StatusCode::FORBIDDEN),
    ];
    for (case, pkh, bytes, want) in cases {
        let (status, body) = c.sign(gw.api, "", pkh, bytes).await.unwrap();
        assert_eq!(status, want, "{case}: {body}");
        if want == StatusCode::OK {
            let pk = &s.keys().iter().find(|k| k.pkh() == pkh).unwrap().public_key().clone();
            pk.verify(bytes, body["signature"].as_str().unwrap()).unwrap();
        } else {
            assert_error_trace(&body).unwrap();
        }
    }
    assert_eq!(s.stats().signs, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_chunked_bodies_and_version_query() {
    let s = signer(&[3]).await;
    let pkh = s.pkhs()[0];
    let pk = s.public_keys()[0].clone();
    let mut cfg = GatewayConfig::new(&[("primary", s.addr())]);
    cfg.path_prefix = "/signer".into();
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let c = Client::new();

    // Outside the prefix: 404.
    let msg = attestation(TEST_CHAIN, 1, 0, 1);
    let (status, body) = c.sign(gw.api, "", pkh, &msg).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_trace(&body).unwrap();

    // Under it, with the query octez sends: passed on to the signer unchanged.
    let (status, body) = c
        .sign_query(gw.api, "/signer", pkh, Some("version=2"), &msg)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    pk.verify(&msg, body["signature"].as_str().unwrap()).unwrap();
    assert_eq!(s.stats().last_query.as_deref(), Some("version=2"));

    // Chunked body with the trailing newline.
    let msg = attestation(TEST_CHAIN, 2, 0, 1);
    let text = json_hex(&msg);
    let chunks = text.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect();
    let r = c
        .raw_chunked(Method::POST, &gw.api_url(&format!("/signer/keys/{pkh}")), chunks, &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    pk.verify(&msg, r.value()["signature"].as_str().unwrap()).unwrap();

    let (status, body) = c.get(&gw.api_url("/signer/authorized_keys")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.is_object(), "{body}");
}
