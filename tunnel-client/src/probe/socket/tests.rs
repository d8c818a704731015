//! The socket probe against a fake signer on loopback writing chosen bytes, through the
//! probe the supervisor runs ([`crate::probe::probe`], config and all); the decoding rules as a
//! table on whole frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::{check_answer, REQUEST};
use crate::config::Settings;
use crate::testing;

/// Frame `message`: its `u16` length, then it.
fn frame(message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).expect("test frame fits a u16");
    [&len.to_be_bytes()[..], message].concat()
}

/// `u32` length, then `body` (data-encoding's `list`, `bytes` and `string`).
fn dynamic(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("test body fits a u32");
    [&len.to_be_bytes()[..], body].concat()
}

/// A key hash: curve tag and 20 bytes.
fn pkh(tag: u8, fill: u8) -> Vec<u8> {
    [&[tag][..], &[fill; 20]].concat()
}

/// A BSON document of string fields, as json-data-encoding writes an error's JSON.
fn bson(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut elements = Vec::new();
    for (name, value) in fields {
        elements.push(0x02);
        elements.extend_from_slice(name.as_bytes());
        elements.push(0);
        let len = i32::try_from(value.len() + 1).expect("short");
        elements.extend_from_slice(&len.to_le_bytes());
        elements.extend_from_slice(value.as_bytes());
        elements.push(0);
    }
    let total = i32::try_from(elements.len() + 5).expect("short");
    [&total.to_le_bytes()[..], &elements, &[0]].concat()
}

/// No authentication required: `Ok`, tag 0.
const NO_AUTH: [u8; 2] = [0x00, 0x00];

/// `Ok` with a list of authorized keys.
fn keys(list: &[Vec<u8>]) -> Vec<u8> {
    [&[0x00, 0x01][..], &dynamic(&list.concat())].concat()
}

/// `Error` with a trace of these errors.
fn error(errors: &[Vec<u8>]) -> Vec<u8> {
    let trace: Vec<u8> = errors.iter().flat_map(|e| dynamic(e)).collect();
    [&[0x01][..], &dynamic(&trace)].concat()
}

/// A signer on loopback that reads one request, hands it over, writes `bytes`, then closes
/// the connection or, with `hold`, keeps it open and silent.
async fn fake_signer(bytes: Vec<u8>, hold: bool) -> (String, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; REQUEST.len()];
        if tcp.read_exact(&mut request).await.is_err() {
            return;
        }
        let _ = tx.send(request);
        // The probe may hang up before reading everything (a wrong first byte): not an error.
        let _ = tcp.write_all(&bytes).await;
        if hold {
            std::future::pending::<()>().await;
        }
    });
    (addr, rx)
}

fn socket_settings(addr: &str, timeout: &str) -> Arc<Settings> {
    testing::settings(&format!(
        "gateways: ['gw:2222']\nhost_key: 'SHA256:abc'\nsigner: '{addr}'\nsigner_protocol: socket\n\
         health_check: {{timeout: {timeout}}}\n"
    ))
}

/// Probe a fake signer answering `bytes` and closing; the request it got, and the verdict.
async fn probe_answering(bytes: Vec<u8>) -> (Vec<u8>, Result<(), String>) {
    let (addr, request) = fake_signer(bytes, false).await;
    let verdict = crate::probe::probe(&socket_settings(&addr, "5s").config).await;
    (request.await.unwrap_or_default(), verdict)
}

#[tokio::test]
async fn healthy_answers_count_and_the_request_is_authorized_keys() {
    let answers = [
        ("no authentication", NO_AUTH.to_vec()),
        ("no key", keys(&[])),
        ("a tz1 and a tz4 key", keys(&[pkh(0, 0xaa), pkh(3, 0xbb)])),
        ("an ml-dsa key", keys(&[pkh(4, 0xcc)])),
    ];
    for (what, answer) in answers {
        let (request, verdict) = probe_answering(frame(&answer)).await;
        assert_eq!(verdict, Ok(()), "{what}");
        assert_eq!(
            request,
            [0x00, 0x01, 0x02],
            "{what}: the Authorized_keys request, framed"
        );
    }
}

#[tokio::test]
async fn an_error_answer_fails_with_the_error_id() {
    let failure = bson(&[("kind", "temporary"), ("id", "failure"), ("msg", "Ledger locked")]);
    let (_, verdict) = probe_answering(frame(&error(&[failure, bson(&[("kind", "x")])]))).await;
    assert_eq!(verdict, Err("answered an error: failure (2 in the trace)".into()));
    // An entry that is not BSON is still an error answer, without an id.
    let (_, verdict) = probe_answering(frame(&error(&[b"\xff\xfe".to_vec()]))).await;
    assert_eq!(verdict, Err("answered an error (1 in the trace)".into()));
    // Nor is an unprintable id repeated.
    let odd = bson(&[("id", "a\nb")]);
    let (_, verdict) = probe_answering(frame(&error(&[odd]))).await;
    assert_eq!(verdict, Err("answered an error (1 in the trace)".into()));
}

#[tokio::test]
async fn a_truncated_answer_fails() {
    let whole = frame(&keys(&[pkh(0, 1), pkh(1, 2)]));
    let (_, verdict) = probe_answering(whole[..10].to_vec()).await;
    assert_eq!(
        verdict,
        Err("truncated answer: the frame announced 48 bytes, the connection closed after 8".into())
    );
    let (_, verdict) = probe_answering(vec![0x00]).await;
    assert_eq!(
        verdict,
        Err("closed the connection after 1 byte of the answer's 2-byte length".into())
    );
}

#[tokio::test]
async fn oversized_and_garbage_answers_fail() {
    // The largest frame there is, garbage: read whole (64 KiB), then refused.
    let (_, verdict) = probe_answering(frame(&[0xff; u16::MAX as usize])).await;
    assert_eq!(verdict, Err("malformed answer: result tag 0xff".into()));
    // A healthy answer padded to the largest frame is not healthy.
    let padded = [&NO_AUTH[..], &[0u8; u16::MAX as usize - 2]].concat();
    let (_, verdict) = probe_answering(frame(&padded)).await;
    assert_eq!(
        verdict,
        Err("malformed answer: 65533 bytes after \"no authentication\"".into())
    );
    // An HTTP server's answer is named for what it is.
    let (_, verdict) = probe_answering(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
    assert_eq!(
        verdict,
        Err("answered in HTTP, not the socket protocol (signer_protocol: http?)".into())
    );
}

#[tokio::test]
async fn closed_without_answer_fails() {
    let (_, verdict) = probe_answering(Vec::new()).await;
    assert_eq!(verdict, Err("closed the connection without answering".into()));
}

#[tokio::test]
async fn nobody_listening_fails_at_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let verdict = crate::probe::probe(&socket_settings(&addr, "5s").config).await;
    assert!(matches!(&verdict, Err(e) if e.starts_with("connect: ")), "{verdict:?}");
}

/// A signer that takes the request and never answers fails after exactly the timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_signer_fails_after_the_timeout() {
    let (addr, _request) = fake_signer(Vec::new(), true).await;
    let settings = socket_settings(&addr, "1s");
    let t0 = tokio::time::Instant::now();
    let verdict = crate::probe::probe(&settings.config).await;
    assert_eq!(verdict, Err("no answer within 1s".into()));
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
}

/// Every way a whole frame can fail to be a good `Authorized_keys` answer, and the reason.
#[test]
fn malformed_frames() {
    let key = pkh(0, 7);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty answer"),
        ("Ok alone", vec![0x00], "malformed answer: Ok without a result"),
        ("result tag", vec![0x02, 0x00], "malformed answer: result tag 0x02"),
        (
            "keys tag",
            vec![0x00, 0x02],
            "malformed answer: authorized keys tag 0x02",
        ),
        (
            "no list length",
            vec![0x00, 0x01, 0x00, 0x00],
            "malformed answer: the key list overruns the frame",
        ),
        (
            "list longer than the frame",
            [&[0x00, 0x01][..], &42u32.to_be_bytes(), &key].concat(),
            "malformed answer: the key list overruns the frame",
        ),
        (
            "list length beyond u30",
            [&[0x00, 0x01][..], &u32::MAX.to_be_bytes()].concat(),
            "malformed answer: the key list overruns the frame",
        ),
        (
            "bytes after the list",
            [&keys(std::slice::from_ref(&key))[..], &[0x00]].concat(),
            "malformed answer: 1 bytes after the key list",
        ),
        (
            "partial key hash",
            [&[0x00, 0x01][..], &dynamic(&key[..20])].concat(),
            "malformed answer: a key list of 20 bytes is not whole 21-byte key hashes",
        ),
        (
            "curve tag",
            keys(&[key.clone(), pkh(5, 0)]),
            "malformed answer: key hash curve tag 0x05",
        ),
        (
            "no trace length",
            vec![0x01, 0x00],
            "malformed answer: the error trace overruns the frame",
        ),
        (
            "bytes after the trace",
            [&error(&[])[..], &[0x00]].concat(),
            "malformed answer: 1 bytes after the error trace",
        ),
        (
            "error overruns the trace",
            [&[0x01][..], &dynamic(&[0x00, 0x00, 0x00, 0x09, 0x01])].concat(),
            "malformed answer: an error of the trace overruns it",
        ),
    ];
    for (what, message, reason) in cases {
        assert_eq!(check_answer(&message), Err(reason.to_string()), "{what}");
    }
    assert_eq!(
        check_answer(&error(&[])),
        Err("answered an error (0 in the trace)".into()),
        "an empty trace is still an error"
    );
}

/// `signer_protocol: http` (the default) still sends a GET of the path.
#[tokio::test]
async fn http_signers_are_still_probed_with_get() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut buf).await.unwrap() {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    let settings = testing::settings(&format!(
        "gateways: ['gw:2222']\nhost_key: 'SHA256:abc'\nsigner: '{addr}'\nhealth_check: {{timeout: 5s}}\n"
    ));
    assert_eq!(crate::probe::probe(&settings.config).await, Ok(()));
    let head = server.await.unwrap();
    assert!(head.starts_with("GET /authorized_keys HTTP/1.1\r\n"), "{head}");
}
