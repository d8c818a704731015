//! Byte vectors built by hand from octez's encodings (module doc: `signer_messages.ml` and
//! the data-encoding rules, tezos-mirror `d26a8bef`), round trips, bad input, properties.

use proptest::prelude::*;

use super::*;
use crate::tezos::{encode_public_key, BlsPublicKey, Curve, Pkh, PublicKey};

/// tz1VSUr8wwNhLAzempoch5d6hLRiTh8Cjcjb (octez's sandbox `bootstrap1`).
const TZ1: &str = "tz1VSUr8wwNhLAzempoch5d6hLRiTh8Cjcjb";
const TZ1_HASH: &str = "6b82198cb179e8306c1bedd08f12dc863f328886";
/// tz4FEDKB6iFtnFNpqdHdkQJ1scwLazRg9YAy: the hash 0x44 × 20.
const TZ4: &str = "tz4FEDKB6iFtnFNpqdHdkQJ1scwLazRg9YAy";
const TZ4_HASH: &str = "4444444444444444444444444444444444444444";

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("test vector is hex")
}

fn tz1() -> Pkh {
    TZ1.parse().expect("valid tz1")
}

fn tz4() -> Pkh {
    TZ4.parse().expect("valid tz4")
}

/// A valid BLS public key from a seed.
fn bls_key(ikm: &[u8; 32]) -> BlsPublicKey {
    let sk = blst::min_pk::SecretKey::key_gen(ikm, &[]).expect("32-byte seed");
    BlsPublicKey::from_bytes(&sk.sk_to_pk().compress()).expect("generated key is valid")
}

/// A small attestation-shaped payload (magic 0x13, chain id, …): the codec does not read it.
const DATA: &str = "13 7a06a770 0102030405";

/// Requests and their exact bytes (the frame's contents). Each layout is the octez
/// `Request.encoding` case named, field by field.
fn request_vectors() -> Vec<(&'static str, Request, Vec<u8>)> {
    let data = unhex(DATA);
    vec![
        (
            // Tag 0; pkh_encoding tag 0 (ed25519) + 20; `bytes` = u32 length + data; no
            // authentication (nothing left).
            "sign tz1",
            Request::Sign(SignRequest {
                pkh: tz1(),
                version: None,
                data: data.clone(),
                authentication: None,
            }),
            unhex(&format!("00 00 {TZ1_HASH} 0000000a {DATA}")),
        ),
        (
            // pkh_encoding tag 3: Public_key_hash.encoding (tag 3 + 20) then version int8.
            "sign tz4 version 2",
            Request::Sign(SignRequest {
                pkh: tz4(),
                version: Some(SignatureVersion::V2),
                data: data.clone(),
                authentication: None,
            }),
            unhex(&format!("00 03 03 {TZ4_HASH} 02 0000000a {DATA}")),
        ),
        (
            // Authentication: `opt` of a variable encoding at the end = the 64 raw bytes.
            "sign tz1 authenticated",
            Request::Sign(SignRequest {
                pkh: tz1(),
                version: None,
                data: data.clone(),
                authentication: Some(Signature::Generic([0xab; 64])),
            }),
            unhex(&format!("00 00 {TZ1_HASH} 0000000a {DATA} {}", "ab".repeat(64))),
        ),
        (
            "public key",
            Request::PublicKey(tz1()),
            unhex(&format!("01 00 {TZ1_HASH}")),
        ),
        ("authorized keys", Request::AuthorizedKeys, unhex("02")),
        (
            // Plain Public_key_hash.encoding here, not pkh_encoding: no version.
            "deterministic nonce tz4",
            Request::DeterministicNonce(AuthenticatedRequest {
                pkh: tz4(),
                data: data.clone(),
                authentication: None,
            }),
            unhex(&format!("03 03 {TZ4_HASH} 0000000a {DATA}")),
        ),
        (
            "deterministic nonce hash",
            Request::DeterministicNonceHash(AuthenticatedRequest {
                pkh: tz1(),
                data: Vec::new(),
                authentication: Some(Signature::Bls([0x11; 96])),
            }),
            unhex(&format!("04 00 {TZ1_HASH} 00000000 {}", "11".repeat(96))),
        ),
        (
            "supports deterministic nonces",
            Request::SupportsDeterministicNonces(tz4()),
            unhex(&format!("05 03 {TZ4_HASH}")),
        ),
        ("known keys", Request::KnownKeys, unhex("06")),
        (
            // `opt` of a fixed-size encoding: 0x00 absent.
            "bls prove possession",
            Request::BlsProvePossession(BlsProvePossession {
                pkh: tz4(),
                override_pk: None,
            }),
            unhex(&format!("07 03 {TZ4_HASH} 00")),
        ),
        (
            // 0xff present, then the 48 compressed bytes.
            "bls prove possession with override",
            Request::BlsProvePossession(BlsProvePossession {
                pkh: tz4(),
                override_pk: Some(bls_key(&[7; 32])),
            }),
            [
                unhex(&format!("07 03 {TZ4_HASH} ff")),
                bls_key(&[7; 32]).bytes().to_vec(),
            ]
            .concat(),
        ),
    ]
}

/// A BSON document as json-data-encoding writes `{"msg":"x"}`: i32 LE size, 0x02 (string)
/// "msg\0", i32 LE length with the NUL, "x\0", 0x00.
const BSON_MSG_X: &str = "10000000 02 6d736700 02000000 7800 00";

/// Answers and their exact bytes: `result_encoding` tag 0 + the response encoding, or tag 1
/// + the trace.
fn response_vectors() -> Vec<(&'static str, RequestKind, Response, Vec<u8>)> {
    let ed_pk = [0x5a; 32];
    let sp_pk = [[0x02].as_slice(), &[0x33; 32]].concat();
    vec![
        (
            // Signature.encoding: raw bytes, no length.
            "signature ed25519",
            RequestKind::Sign,
            Response::Signature(Signature::Generic([0xcd; 64])),
            unhex(&format!("00 {}", "cd".repeat(64))),
        ),
        (
            "signature bls",
            RequestKind::Sign,
            Response::Signature(Signature::Bls([0xb1; 96])),
            unhex(&format!("00 {}", "b1".repeat(96))),
        ),
        (
            "public key ed25519",
            RequestKind::PublicKey,
            Response::PublicKey(PublicKey::Ed25519(ed_pk)),
            unhex(&format!("00 00 {}", "5a".repeat(32))),
        ),
        (
            "public key secp256k1",
            RequestKind::PublicKey,
            Response::PublicKey(PublicKey::Other {
                curve: Curve::Secp256k1,
                text: encode_public_key(Curve::Secp256k1, &sp_pk),
                bytes: sp_pk.clone(),
            }),
            [unhex("00 01"), sp_pk].concat(),
        ),
        (
            "public key bls",
            RequestKind::PublicKey,
            Response::PublicKey(PublicKey::Bls(bls_key(&[9; 32]))),
            [unhex("00 03"), bls_key(&[9; 32]).bytes().to_vec()].concat(),
        ),
        (
            // Union tag 0, `constant` takes no bytes.
            "no authentication",
            RequestKind::AuthorizedKeys,
            Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication),
            unhex("00 00"),
        ),
        (
            // Union tag 1, `list` = u32 byte length + 21-byte entries.
            "authorized keys",
            RequestKind::AuthorizedKeys,
            Response::AuthorizedKeys(AuthorizedKeys::Keys(vec![tz1(), tz4()])),
            unhex(&format!("00 01 0000002a 00 {TZ1_HASH} 03 {TZ4_HASH}")),
        ),
        (
            "deterministic nonce",
            RequestKind::DeterministicNonce,
            Response::DeterministicNonce(vec![0x42; 32]),
            unhex(&format!("00 00000020 {}", "42".repeat(32))),
        ),
        (
            "deterministic nonce hash",
            RequestKind::DeterministicNonceHash,
            Response::DeterministicNonceHash(vec![1, 2, 3]),
            unhex("00 00000003 010203"),
        ),
        (
            "supports deterministic nonces",
            RequestKind::SupportsDeterministicNonces,
            Response::SupportsDeterministicNonces(true),
            unhex("00 ff"),
        ),
        (
            "known keys, none",
            RequestKind::KnownKeys,
            Response::KnownKeys(Vec::new()),
            unhex("00 00000000"),
        ),
        (
            "proof of possession",
            RequestKind::BlsProvePossession,
            Response::BlsProofOfPossession([0x8c; 96]),
            unhex(&format!("00 {}", "8c".repeat(96))),
        ),
        (
            // Tag 1, `list` of `string`s, each a BSON document.
            "error",
            RequestKind::Sign,
            Response::Error(ErrorTrace(vec![unhex(BSON_MSG_X)])),
            unhex(&format!("01 00000014 00000010 {BSON_MSG_X}")),
        ),
    ]
}

#[test]
fn vector_keys_are_the_named_ones() {
    assert_eq!(hex::encode(tz1().hash), TZ1_HASH);
    assert_eq!(hex::encode(tz4().hash), TZ4_HASH);
}

#[test]
fn requests_encode_to_and_decode_from_their_vectors() {
    for (name, request, bytes) in request_vectors() {
        assert_eq!(encode_request(&request).as_deref(), Ok(bytes.as_slice()), "{name}");
        assert_eq!(decode_request(&bytes), Ok(request), "{name}");
    }
}

#[test]
fn responses_encode_to_and_decode_from_their_vectors() {
    for (name, kind, response, bytes) in response_vectors() {
        assert_eq!(encode_response(&response).as_deref(), Ok(bytes.as_slice()), "{name}");
        assert_eq!(decode_response(kind, &bytes), Ok(response), "{name}");
    }
}

#[test]
fn an_error_answers_any_request_kind() {
    let bytes = unhex(&format!("01 00000014 00000010 {BSON_MSG_X}"));
    for kind in all_kinds() {
        assert!(
            matches!(decode_response(kind, &bytes), Ok(Response::Error(_))),
            "{kind:?}"
        );
    }
}

fn all_kinds() -> [RequestKind; 8] {
    [
        RequestKind::Sign,
        RequestKind::PublicKey,
        RequestKind::AuthorizedKeys,
        RequestKind::DeterministicNonce,
        RequestKind::DeterministicNonceHash,
        RequestKind::SupportsDeterministicNonces,
        RequestKind::KnownKeys,
        RequestKind::BlsProvePossession,
    ]
}

#[test]
fn sign_request_versions_follow_octez_client() {
    let sign = |pkh, version| {
        encode_request(&Request::Sign(SignRequest {
            pkh,
            version,
            data: vec![0x11],
            authentication: None,
        }))
    };
    // A tz4 request with no version sends octez's latest, 3.
    assert_eq!(
        sign(tz4(), None),
        Ok(unhex(&format!("00 03 03 {TZ4_HASH} 03 00000001 11")))
    );
    // tz1–tz3 never send one.
    assert_eq!(
        sign(tz1(), Some(SignatureVersion::V1)),
        Ok(unhex(&format!("00 00 {TZ1_HASH} 00000001 11")))
    );
    let tz5 = Pkh {
        curve: Curve::MlDsa44,
        hash: [1; 20],
    };
    assert_eq!(sign(tz5, None), Err(EncodeError::Tz5WithoutVersion));
    // octez decodes the versioned form around any key hash; so does this.
    let odd = unhex(&format!("00 03 00 {TZ1_HASH} 01 00000001 11"));
    assert!(matches!(
        decode_request(&odd),
        Ok(Request::Sign(SignRequest { pkh, version: Some(SignatureVersion::V1), .. })) if pkh == tz1()
    ));
}

#[test]
fn authentication_payload_is_octez_to_sign() {
    let data = unhex(DATA);
    assert_eq!(
        authentication_payload(RequestKind::Sign, &tz1(), &data),
        Some(unhex(&format!("04 01 00 {TZ1_HASH} {DATA}")))
    );
    assert_eq!(
        authentication_payload(RequestKind::DeterministicNonceHash, &tz4(), &data),
        Some(unhex(&format!("04 03 03 {TZ4_HASH} {DATA}")))
    );
    assert_eq!(authentication_payload(RequestKind::PublicKey, &tz1(), &data), None);
}

/// Every strict prefix of a message fails, except where the message ends with an optional
/// field whose absence is itself valid (the authentication signature), or with a signature
/// whose 64-byte prefix is another valid signature (96 bytes cut at 64).
#[test]
fn every_truncation_is_an_error() {
    for (name, request, bytes) in request_vectors() {
        let auth = request_auth_len(&request);
        let base = bytes.len() - auth;
        for cut in 0..bytes.len() {
            let got = decode_request(&bytes[..cut]);
            if auth > 0 && (cut == base || cut == base + 64) {
                assert!(got.is_ok(), "{name} cut at {cut}: {got:?}");
            } else {
                assert!(got.is_err(), "{name} cut at {cut}: {got:?}");
            }
        }
    }
    for (name, kind, _, bytes) in response_vectors() {
        for cut in 0..bytes.len() {
            let got = decode_response(kind, &bytes[..cut]);
            if kind == RequestKind::Sign && cut == 65 {
                assert!(matches!(got, Ok(Response::Signature(Signature::Generic(_)))), "{name}");
            } else {
                assert!(got.is_err(), "{name} cut at {cut}: {got:?}");
            }
        }
    }
}

fn request_auth_len(request: &Request) -> usize {
    match request {
        Request::Sign(SignRequest {
            authentication: Some(s),
            ..
        })
        | Request::DeterministicNonce(AuthenticatedRequest {
            authentication: Some(s),
            ..
        })
        | Request::DeterministicNonceHash(AuthenticatedRequest {
            authentication: Some(s),
            ..
        }) => s.as_bytes().len(),
        _ => 0,
    }
}

#[test]
fn truncations_name_the_field() {
    // Cut inside the sign request's key hash.
    assert_eq!(
        decode_request(&unhex("00 00 6b82")),
        Err(DecodeError::Truncated {
            what: "sign key hash",
            needed: 20,
            left: 2
        })
    );
    // Cut inside the authentication signature: 10 bytes is no signature length.
    assert_eq!(
        decode_request(&unhex(&format!("00 00 {TZ1_HASH} 00000000 {}", "ab".repeat(10)))),
        Err(DecodeError::SignatureLength {
            what: "authentication signature",
            len: 10
        })
    );
    assert_eq!(
        decode_request(&[]),
        Err(DecodeError::Truncated {
            what: "request",
            needed: 1,
            left: 0
        })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    for (name, request, mut bytes) in request_vectors() {
        bytes.push(0);
        let got = decode_request(&bytes);
        match request.kind() {
            // The trailing byte becomes a 1-byte "signature".
            RequestKind::Sign | RequestKind::DeterministicNonce | RequestKind::DeterministicNonceHash => {
                assert!(
                    matches!(got, Err(DecodeError::SignatureLength { .. })),
                    "{name}: {got:?}"
                )
            }
            _ => assert_eq!(
                got,
                Err(DecodeError::TrailingBytes {
                    what: "request",
                    count: 1
                }),
                "{name}"
            ),
        }
    }
    for (name, kind, _, mut bytes) in response_vectors() {
        bytes.push(0);
        let got = decode_response(kind, &bytes);
        assert!(got.is_err(), "{name}: {got:?}");
    }
    // Inside a length-prefixed list: half an entry left over.
    assert_eq!(
        decode_response(RequestKind::KnownKeys, &unhex(&format!("00 00000016 00 {TZ1_HASH} 03"))),
        Err(DecodeError::Truncated {
            what: "known keys",
            needed: 20,
            left: 0
        })
    );
}

#[test]
fn oversized_length_prefixes_are_refused_before_reading() {
    assert_eq!(
        decode_request(&unhex(&format!("00 00 {TZ1_HASH} ffffffff 13"))),
        Err(DecodeError::Truncated {
            what: "sign data",
            needed: 0xffff_ffff,
            left: 1
        })
    );
    assert!(matches!(
        decode_response(RequestKind::KnownKeys, &unhex("00 7fffffff")),
        Err(DecodeError::Truncated { what: "known keys", .. })
    ));
    assert!(matches!(
        decode_response(RequestKind::Sign, &unhex("01 00000005 ffffffff 00")),
        Err(DecodeError::Truncated { what: "error", .. })
    ));
}

#[test]
fn unknown_tags_and_bad_values_are_refused() {
    let unknown = |what, tag| DecodeError::UnknownTag { what, tag };
    assert_eq!(decode_request(&[8]), Err(unknown("request", 8)));
    assert_eq!(decode_request(&[0xff]), Err(unknown("request", 0xff)));
    // tz5 has no form of its own in pkh_encoding (tag 4 is not a case there).
    assert_eq!(
        decode_request(&unhex(&format!("00 04 {TZ1_HASH}"))),
        Err(unknown("sign key hash", 4))
    );
    // Public_key_hash tags stop at 4.
    assert_eq!(
        decode_request(&unhex(&format!("01 05 {TZ1_HASH}"))),
        Err(unknown("key hash", 5))
    );
    assert_eq!(
        decode_request(&unhex(&format!("00 03 03 {TZ4_HASH} 04 00000000"))),
        Err(DecodeError::Invalid {
            what: "signature version",
            value: 4
        })
    );
    assert_eq!(
        decode_request(&unhex(&format!("07 03 {TZ4_HASH} 01"))),
        Err(DecodeError::Invalid {
            what: "override_pk option",
            value: 1
        })
    );
    assert_eq!(
        decode_request(&[unhex(&format!("07 03 {TZ4_HASH} ff")), vec![0xff; 48]].concat()),
        Err(DecodeError::BadBlsKey { what: "override_pk" })
    );
    assert_eq!(decode_response(RequestKind::Sign, &[2]), Err(unknown("result", 2)));
    assert_eq!(
        decode_response(RequestKind::AuthorizedKeys, &[0, 2]),
        Err(unknown("authorized keys", 2))
    );
    assert_eq!(
        decode_response(RequestKind::PublicKey, &unhex(&format!("00 07 {}", "00".repeat(32)))),
        Err(unknown("public key", 7))
    );
    assert_eq!(
        decode_response(RequestKind::PublicKey, &[[0, 3].as_slice(), &[0xff; 48]].concat()),
        Err(DecodeError::BadBlsKey { what: "public key" })
    );
    assert_eq!(
        decode_response(RequestKind::SupportsDeterministicNonces, &[0, 1]),
        Err(DecodeError::Invalid { what: "bool", value: 1 })
    );
    assert_eq!(
        decode_response(RequestKind::Sign, &[0; 33]),
        Err(DecodeError::SignatureLength {
            what: "signature",
            len: 32
        })
    );
}

#[test]
fn encoding_refuses_what_does_not_fit() {
    let big = Request::Sign(SignRequest {
        pkh: tz1(),
        version: None,
        data: vec![0; MAX_FRAME],
        authentication: None,
    });
    assert!(matches!(encode_request(&big), Err(EncodeError::TooLarge { .. })));
    // Just fits: 1 + 21 + 4 + data.
    let fits = Request::Sign(SignRequest {
        pkh: tz1(),
        version: None,
        data: vec![0; MAX_FRAME - 26],
        authentication: None,
    });
    assert_eq!(encode_request(&fits).map(|b| b.len()), Ok(MAX_FRAME));
    let bad_key = Response::PublicKey(PublicKey::Other {
        curve: Curve::P256,
        bytes: vec![2; 32],
        text: String::new(),
    });
    assert_eq!(
        encode_response(&bad_key),
        Err(EncodeError::KeyLength {
            curve: Curve::P256,
            len: 32
        })
    );
}

mod frames {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[1, 2, 3]).await.expect("write");
        write_frame(&mut wire, &[]).await.expect("write");
        assert_eq!(wire, [0, 3, 1, 2, 3, 0, 0]);
        let mut r = wire.as_slice();
        assert_eq!(read_frame(&mut r, MAX_FRAME).await, Ok(Some(vec![1, 2, 3])));
        assert_eq!(read_frame(&mut r, MAX_FRAME).await, Ok(Some(Vec::new())));
        // A clean end between frames.
        assert_eq!(read_frame(&mut r, MAX_FRAME).await, Ok(None));
    }

    #[tokio::test]
    async fn a_sign_request_frame_is_length_then_message() {
        let (_, request, message) = request_vectors().swap_remove(0);
        let mut wire = Vec::new();
        write_frame(&mut wire, &encode_request(&request).expect("encodes"))
            .await
            .expect("write");
        assert_eq!(wire, [unhex("0024"), message].concat());
    }

    #[tokio::test]
    async fn cut_frames_are_truncated() {
        let mut r: &[u8] = &[0];
        assert_eq!(
            read_frame(&mut r, MAX_FRAME).await,
            Err(FrameError::Truncated { expected: 2, got: 1 })
        );
        let mut r: &[u8] = &[0, 16, 1, 2, 3];
        assert_eq!(
            read_frame(&mut r, MAX_FRAME).await,
            Err(FrameError::Truncated { expected: 16, got: 3 })
        );
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_the_body() {
        // Only the header is there: refusing must not wait for (or allocate) the body.
        let mut r: &[u8] = &[0xff, 0xff];
        assert_eq!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::TooLong { len: 0xffff, max: 1024 })
        );
        let mut sink = Vec::new();
        assert_eq!(
            write_frame(&mut sink, &vec![0; MAX_FRAME + 1]).await,
            Err(FrameError::TooLong {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn a_peer_closing_mid_answer_is_truncated() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut server, &[0, 65, 0, 1, 2])
            .await
            .expect("write");
        drop(server);
        assert_eq!(
            read_frame(&mut client, MAX_FRAME).await,
            Err(FrameError::Truncated { expected: 65, got: 3 })
        );
    }
}

fn arb_pkh() -> impl Strategy<Value = Pkh> {
    let curves = prop_oneof![
        Just(Curve::Ed25519),
        Just(Curve::Secp256k1),
        Just(Curve::P256),
        Just(Curve::Bls),
        Just(Curve::MlDsa44),
    ];
    (curves, any::<[u8; 20]>()).prop_map(|(curve, hash)| Pkh { curve, hash })
}

fn arb_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len)
}

fn arb_signature() -> impl Strategy<Value = Signature> {
    prop_oneof![
        4 => arb_bytes(64).prop_map(|b| Signature::Generic(b.try_into().expect("64 bytes"))),
        4 => arb_bytes(96).prop_map(|b| Signature::Bls(b.try_into().expect("96 bytes"))),
        1 => arb_bytes(2420).prop_map(|b| Signature::MlDsa44(Box::new(b.try_into().expect("2420 bytes")))),
    ]
}

fn arb_version() -> impl Strategy<Value = SignatureVersion> {
    (0u8..4).prop_map(|n| SignatureVersion::from_number(n).expect("0..4"))
}

/// BLS keys are generated from seeds: `BlsPublicKey` has no `Debug` for proptest to show.
fn arb_bls_seed() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn arb_data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

fn arb_request() -> impl Strategy<Value = Request> {
    let sign = (arb_pkh(), arb_version(), arb_data(), prop::option::of(arb_signature())).prop_map(
        |(pkh, version, data, authentication)| {
            // octez sends a version with tz4/tz5 keys only (see `SignRequest::version`).
            let version = matches!(pkh.curve, Curve::Bls | Curve::MlDsa44).then_some(version);
            Request::Sign(SignRequest {
                pkh,
                version,
                data,
                authentication,
            })
        },
    );
    let authenticated = || {
        (arb_pkh(), arb_data(), prop::option::of(arb_signature())).prop_map(|(pkh, data, authentication)| {
            AuthenticatedRequest {
                pkh,
                data,
                authentication,
            }
        })
    };
    prop_oneof![
        sign,
        arb_pkh().prop_map(Request::PublicKey),
        Just(Request::AuthorizedKeys),
        authenticated().prop_map(Request::DeterministicNonce),
        authenticated().prop_map(Request::DeterministicNonceHash),
        arb_pkh().prop_map(Request::SupportsDeterministicNonces),
        Just(Request::KnownKeys),
        (arb_pkh(), prop::option::of(arb_bls_seed())).prop_map(|(pkh, seed)| {
            Request::BlsProvePossession(BlsProvePossession {
                pkh,
                override_pk: seed.map(|s| bls_key(&s)),
            })
        }),
    ]
}

fn arb_public_key() -> impl Strategy<Value = PublicKey> {
    let other = |curve, len| {
        arb_bytes(len).prop_map(move |bytes| PublicKey::Other {
            curve,
            text: encode_public_key(curve, &bytes),
            bytes,
        })
    };
    prop_oneof![
        any::<[u8; 32]>().prop_map(PublicKey::Ed25519),
        arb_bls_seed().prop_map(|s| PublicKey::Bls(bls_key(&s))),
        other(Curve::Secp256k1, 33),
        other(Curve::P256, 33),
        other(Curve::MlDsa44, 1312),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let keys = || prop::collection::vec(arb_pkh(), 0..20);
    prop_oneof![
        arb_signature().prop_map(Response::Signature),
        arb_public_key().prop_map(Response::PublicKey),
        Just(Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication)),
        keys().prop_map(|k| Response::AuthorizedKeys(AuthorizedKeys::Keys(k))),
        arb_data().prop_map(Response::DeterministicNonce),
        arb_data().prop_map(Response::DeterministicNonceHash),
        any::<bool>().prop_map(Response::SupportsDeterministicNonces),
        keys().prop_map(Response::KnownKeys),
        arb_bytes(96).prop_map(|b| Response::BlsProofOfPossession(b.try_into().expect("96 bytes"))),
        prop::collection::vec(arb_data(), 0..4).prop_map(|e| Response::Error(ErrorTrace(e))),
    ]
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_request(&bytes);
        for kind in all_kinds() {
            let _ = decode_response(kind, &bytes);
        }
    }

    /// Arbitrary bytes behind a valid tag reach deeper than fully random ones.
    #[test]
    fn decoding_tagged_bytes_never_panics(tag in 0u8..9, rest in prop::collection::vec(any::<u8>(), 0..200)) {
        let bytes = [vec![tag], rest].concat();
        let _ = decode_request(&bytes);
        for kind in all_kinds() {
            let _ = decode_response(kind, &bytes);
        }
    }

    #[test]
    fn requests_round_trip(request in arb_request()) {
        let bytes = encode_request(&request).expect("generated requests fit");
        prop_assert_eq!(decode_request(&bytes), Ok(request));
    }

    #[test]
    fn responses_round_trip(response in arb_response()) {
        let bytes = encode_response(&response).expect("generated responses fit");
        let kind = response.kind().unwrap_or(RequestKind::Sign);
        prop_assert_eq!(decode_response(kind, &bytes), Ok(response));
    }

    #[test]
    fn reading_arbitrary_frames_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut r = bytes.as_slice();
            // Read until the end or the first error; each frame is at most `max`.
            while let Ok(Some(frame)) = read_frame(&mut r, max).await {
                assert!(frame.len() <= max);
            }
        });
    }
}
