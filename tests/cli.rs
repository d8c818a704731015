//! The operator's side of the binary: `check-config`, `watermark list/set`, JSON logs, and a
//! graceful SIGTERM that lets an in-flight signature finish.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::harness::{attestation, gateway_bin, Client, Gateway, GatewayConfig, TEST_CHAIN};
use testkit::test_signer::{seed, Mode, TestSigner, TestSignerHandle, TestSignerOptions};

async fn signer(mode: Mode) -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: vec![seed(7)],
        mode,
        ..Default::default()
    })
    .await
    .expect("test signer")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gateway_bin().expect("gateway binary"))
        .args(args)
        .output()
        .expect("run signer-gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_example_and_names_the_bad_field() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/gateway.yaml");
    let (code, out, err) = run(&["check-config", "--config", example]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("valid"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let cases = [
        ("watermark: {dir: /x}\nsignerz: []\n", "signerz"),
        (
            "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:0'}]\n",
            "signers[0].address",
        ),
        (
            "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nrequest_timeout: fast\n",
            "request_timeout",
        ),
    ];
    for (text, field) in cases {
        std::fs::write(&bad, text).unwrap();
        let (code, _, err) = run(&["check-config", "--config", bad.to_str().unwrap()]);
        assert_eq!(code, 64, "a bad config exits 64 (EX_USAGE): {err}");
        assert!(err.contains(field), "error does not name {field}: {err}");
    }
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/gateway.yaml"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/gateway.yaml"), "{err}");
}

/// `watermark set` seeds a store (first-time set-up), `list` shows it, the gateway refuses at
/// or below it, and neither command can touch the store while a gateway holds it.
#[tokio::test]
async fn watermark_set_list_and_lock() {
    let s = signer(Mode::Ok).await;
    let pkh = s.pkhs()[0];
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = GatewayConfig::new(&[("primary", s.addr())]);
    cfg.watermark_backend = "file".into();
    let yaml = cfg.to_yaml();
    // The operator's CLI reads the same config file the gateway will run on.
    let config_path = dir.path().join("cli.yaml");
    std::fs::write(&config_path, yaml.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    let config = config_path.to_str().unwrap();
    let chain = signer_gateway::tezos::ChainId(TEST_CHAIN).to_string();

    let (code, out, err) = run(&[
        "watermark",
        "set",
        "--config",
        config,
        "--chain",
        &chain,
        "--key",
        &pkh.to_string(),
        "--kind",
        "attestation",
        "--level",
        "500",
        "--round",
        "2",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("none -> level 500 round 2"), "{out}");
    let (code, out, err) = run(&["watermark", "list", "--json", "--config", config]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["level"], 500);
    assert_eq!(rows[0]["kind"], "attestation");

    let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    let client = Client::new();
    for (level, round, want) in [
        (499, 9, StatusCode::CONFLICT),
        (500, 2, StatusCode::CONFLICT),
        (500, 1, StatusCode::CONFLICT),
        (500, 3, StatusCode::OK),
        (501, 0, StatusCode::OK),
    ] {
        let (status, body) = client
            .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, level, round, 1))
            .await
            .unwrap();
        assert_eq!(status, want, "level {level} round {round}: {body}");
    }
    // The running gateway holds the store's lock: an operator command must not write under it.
    let (code, _, err) = run(&[
        "watermark",
        "set",
        "--config",
        config,
        "--chain",
        &chain,
        "--key",
        &pkh.to_string(),
        "--level",
        "1",
    ]);
    assert_ne!(code, 0, "watermark set succeeded while the gateway runs");
    assert!(err.to_lowercase().contains("lock") || err.contains("in use"), "{err}");
    drop(gw);

    // Stopped: lowering is an explicit operator action, and it is reported.
    let (code, out, err) = run(&[
        "watermark",
        "set",
        "--config",
        config,
        "--chain",
        &chain,
        "--key",
        &pkh.to_string(),
        "--kind",
        "attestation",
        "--level",
        "10",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("level 501 round 0 -> level 10 round 0"), "{out}");
    assert!(err.contains("watermark set by operator"), "the change is logged: {err}");
}

#[tokio::test]
async fn missing_store_refuses_to_start_unless_asked() {
    let s = signer(Mode::Ok).await;
    let cfg = GatewayConfig::new(&[("primary", s.addr())])
        .to_yaml()
        .replace("create_if_missing: true", "create_if_missing: false");
    let err = match Gateway::start(&cfg).await {
        Ok(_) => panic!("a gateway started without its watermark store"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("create_if_missing"),
        "the error says how to proceed: {err}"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_sign_finish() {
    let s = signer(Mode::Slow(Duration::from_millis(800))).await;
    let pkh = s.pkhs()[0];
    let mut cfg = GatewayConfig::new(&[("primary", s.addr())]);
    cfg.request_timeout = "5s".into();
    cfg.health_timeout = "2s".into();
    let mut gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let api = gw.api;
    let in_flight = tokio::spawn(async move {
        Client::fresh_connections()
            .sign(api, "", pkh, &attestation(TEST_CHAIN, 7, 0, 1))
            .await
    });
    // Let the request reach the gateway, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    let (code, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(code, StatusCode::OK, "the in-flight sign finished: {body}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the gateway waited for it"
    );
    // And no new connection is accepted once stopped.
    assert!(Client::fresh_connections()
        .sign(api, "", pkh, &attestation(TEST_CHAIN, 8, 0, 1))
        .await
        .is_err());
}

#[tokio::test]
async fn json_logs_have_one_object_per_line_and_a_line_per_signature() {
    let s = signer(Mode::Ok).await;
    let pkh = s.pkhs()[0];
    let cfg = GatewayConfig::new(&[("primary", s.addr())])
        .to_yaml()
        .replace("log_format: text", "log_format: json");
    let gw = Gateway::start(&cfg).await.unwrap();
    let client = Client::new();
    let (status, _) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 9, 1, 1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 8, 0, 1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    let log = gw.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // Event fields sit under "fields": flattened, the block level would clash with the log level.
    let signed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "signed")
        .expect("a 'signed' line");
    assert_eq!(signed["level"], "INFO");
    let f = &signed["fields"];
    assert_eq!(f["key"], pkh.to_string());
    assert_eq!(f["kind"], "attestation");
    assert_eq!(f["level"], 9);
    assert_eq!(f["round"], 1);
    assert_eq!(f["signer"], "primary");
    assert!(f["duration_us"].is_number());
    let refused = lines
        .iter()
        .find(|l| l["fields"]["message"] == "watermark refusal")
        .expect("a refusal line");
    assert_eq!(refused["level"], "WARN");
    let text = refused["fields"]["error"].as_str().unwrap();
    assert!(
        text.contains("level 8") && text.contains("level 9"),
        "stored and requested marks: {text}"
    );
}
