//! Signature verification per scheme, as the gateway runs it on every signature before it
//! releases it: ed25519 (tz1), secp256k1 (tz2) and P-256 (tz3) through `PublicKey::verify`
//! (blake2b-256 prehash), BLS12-381 (tz4) under both schemes through `PublicKey::verify_as`
//! (signature decompression, subgroup check and pairing), and parsing a `BLpk…` public key
//! (decompression and subgroup check: done once per key, then cached by the gateway). Each
//! verification includes decoding the base58check signature text, as the gateway gets it.
//!
//! Run: `cargo bench --bench verify` (about 30 s). See `BENCHMARKS.md` ("tz4: BLS verification
//! and round trips over the Pi's link").

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use signer_gateway::tezos::{self, BlsScheme, Curve, PublicKey};
use testkit::harness::{attestation, bls_attestation, TEST_CHAIN};
use testkit::test_signer::{bls_key_from_seed, key_from_seed};

/// A tz2 or tz3 key from a fixed secret, signing as octez does (over blake2b-256 of the
/// bytes): its `sppk…`/`p2pk…` and the `spsig1…`/`p2sig…` of `msg`.
fn ecdsa(curve: Curve, msg: &[u8]) -> (PublicKey, String) {
    let digest = tezos::blake2b_256(msg);
    let (public, sig): (Vec<u8>, [u8; 64]) = match curve {
        Curve::Secp256k1 => {
            use k256::ecdsa::signature::hazmat::PrehashSigner as _;
            let k = k256::ecdsa::SigningKey::from_slice(&[5u8; 32]).expect("valid secp256k1 secret");
            // k256 signs with a low s, as octez (libsecp256k1) requires.
            let sig: k256::ecdsa::Signature = k.sign_prehash(&digest).expect("signing");
            (
                k.verifying_key().to_encoded_point(true).as_bytes().to_vec(),
                sig.to_bytes().into(),
            )
        }
        Curve::P256 => {
            use p256::ecdsa::signature::hazmat::PrehashSigner as _;
            let k = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).expect("valid P-256 secret");
            let sig: p256::ecdsa::Signature = k.sign_prehash(&digest).expect("signing");
            (
                k.verifying_key().to_encoded_point(true).as_bytes().to_vec(),
                sig.to_bytes().into(),
            )
        }
        other => panic!("not an ECDSA curve: {other:?}"),
    };
    let pk: PublicKey = tezos::encode_public_key(curve, &public)
        .parse()
        .expect("a public key we just encoded parses");
    (pk, tezos::encode_signature(curve, &sig))
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.sample_size(30)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3));

    // Consensus operations as a baker sends them: 80 bytes for tz1/tz2/tz3, 78 for tz4.
    let msg = attestation(TEST_CHAIN, 1_000_000, 0, 0xaa);
    let bls_msg = bls_attestation(TEST_CHAIN, 1_000_000, 0, 0xaa);

    let tz1 = key_from_seed(1);
    let tz1_sig = tz1.sign(&msg);
    let mut cases: Vec<(&str, PublicKey, String, &[u8], BlsScheme)> = vec![(
        "tz1 ed25519",
        tz1.public_key().clone(),
        tz1_sig,
        &msg,
        BlsScheme::ProofOfPossession,
    )];
    for (name, curve) in [("tz2 secp256k1", Curve::Secp256k1), ("tz3 P-256", Curve::P256)] {
        let (pk, sig) = ecdsa(curve, &msg);
        cases.push((name, pk, sig, &msg, BlsScheme::ProofOfPossession));
    }
    let tz4 = bls_key_from_seed(1);
    for (name, scheme) in [
        ("tz4 BLS proof-of-possession", BlsScheme::ProofOfPossession),
        ("tz4 BLS augmented", BlsScheme::Augmented),
    ] {
        cases.push((
            name,
            tz4.public_key().clone(),
            tz4.sign_as(&bls_msg, scheme),
            &bls_msg,
            scheme,
        ));
    }
    for (name, pk, sig, m, scheme) in &cases {
        // A bench of a failing verification would measure the wrong thing.
        pk.verify_as(m, sig, *scheme)
            .unwrap_or_else(|e| panic!("{name}: the signature does not verify: {e}"));
        if *scheme == BlsScheme::Augmented {
            assert!(pk.verify(m, sig).is_err(), "{name}: verifies under the other scheme");
        }
        g.bench_function(*name, |b| {
            b.iter(|| pk.verify_as(black_box(m), black_box(sig), *scheme).expect("verifies"))
        });
    }

    let blpk = tz4.public_key().to_string();
    assert!(blpk.starts_with("BLpk"), "{blpk}");
    // Decompression and subgroup check; the gateway does it once per key and caches the key.
    g.bench_function("parse BLpk", |b| {
        b.iter(|| black_box(&blpk).parse::<PublicKey>().expect("valid BLpk"))
    });
    let edpk = tz1.public_key().to_string();
    // For comparison: base58check and 32 bytes.
    g.bench_function("parse edpk", |b| {
        b.iter(|| black_box(&edpk).parse::<PublicKey>().expect("valid edpk"))
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
