//! tz4 (BLS12-381) verification against signatures made by two independent implementations:
//! octez's own test vectors (`tests/vectors/bls_octez.json`, copied from
//! `src/lib_bls12_381_signature/test/test_vectors/` in the octez tree, the files octez's
//! `test_signature.ml` loads for `MinPk`) and signatures made by Taquito 25's `InMemorySigner`
//! (`tests/vectors/bls_taquito.json`, made by `tests/taquito/bls_vectors.mjs`).
//!
//! The gateway's verifier accepts every valid one, none with a flipped bit, none under the
//! other scheme (the augmented signature of a `version=2` request is refused), and none of
//! the invalid ones.

use serde_json::Value;
use signer_gateway::tezos::bls::{BlsPublicKey, BlsScheme};
use signer_gateway::tezos::{self, PublicKey};

fn load(name: &str) -> Value {
    let path = format!("{}/../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex_field(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap_or_else(|| panic!("{field} missing in {v}")))
        .unwrap_or_else(|e| panic!("{field}: {e}"))
}

fn sig96(bytes: &[u8]) -> [u8; 96] {
    bytes.try_into().expect("96-byte signature")
}

/// Every single-bit flip of `sig` (a sample of positions, to keep it quick) fails `check`.
fn no_flip_verifies(sig: &[u8; 96], check: impl Fn(&[u8; 96]) -> bool) -> usize {
    let mut tried = 0;
    for byte in (0..96).step_by(7).chain([95]) {
        for bit in [0, 3, 7] {
            let mut bad = *sig;
            bad[byte] ^= 1 << bit;
            assert!(!check(&bad), "signature with bit {bit} of byte {byte} flipped verified");
            tried += 1;
        }
    }
    tried
}

#[test]
fn octez_vectors() {
    let file = load("bls_octez.json");
    let vectors = file["vectors"].as_array().expect("vectors");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for v in vectors {
        let scheme = v["scheme"].as_str().expect("scheme");
        let line = &v["source_line"];
        assert_eq!(v["valid"], Value::Bool(true), "only valid vectors are copied: {v}");
        let pk = BlsPublicKey::from_bytes(&hex_field(v, "pk_hex")).expect("valid public key");
        // The key matches the secret the file derives it from (blst KeyGen, as octez).
        let sk = blst::min_pk::SecretKey::key_gen(&hex_field(v, "ikm_hex"), &[]).expect("ikm");
        assert_eq!(&sk.sk_to_pk().compress(), pk.bytes(), "line {line}: KeyGen");
        let msg = hex_field(v, "msg_hex");
        let sig = sig96(&hex_field(v, "sig_hex"));
        match scheme {
            "aug" | "pop" => {
                let scheme = if scheme == "aug" {
                    BlsScheme::Augmented
                } else {
                    BlsScheme::ProofOfPossession
                };
                pk.verify(&msg, &sig, scheme)
                    .unwrap_or_else(|e| panic!("line {line}: {e}"));
                assert!(
                    pk.verify(&msg, &sig, scheme.other()).is_err(),
                    "line {line}: other scheme"
                );
                let mut other_msg = msg.clone();
                other_msg.push(0);
                assert!(
                    pk.verify(&other_msg, &sig, scheme).is_err(),
                    "line {line}: other message"
                );
                no_flip_verifies(&sig, |bad| pk.verify(&msg, bad, scheme).is_ok());
            }
            "pop_prove" => {
                assert_eq!(msg.as_slice(), pk.bytes(), "line {line}: a proof is over the key");
                pk.verify_possession(&sig, pk.bytes())
                    .unwrap_or_else(|e| panic!("line {line}: {e}"));
                // A proof is not a signature of the key's bytes, under either scheme.
                assert!(pk.verify(&msg, &sig, BlsScheme::ProofOfPossession).is_err());
                no_flip_verifies(&sig, |bad| pk.verify_possession(bad, pk.bytes()).is_ok());
            }
            other => panic!("unknown scheme {other}"),
        }
        *seen.entry(scheme.to_string()).or_default() += 1;
    }
    for scheme in ["aug", "pop", "pop_prove"] {
        assert!(
            seen.get(scheme).copied().unwrap_or(0) >= 10,
            "too few {scheme} vectors: {seen:?}"
        );
    }
}

#[test]
fn taquito_vectors() {
    let file = load("bls_taquito.json");
    let mut valid = 0;
    for v in file["vectors"].as_array().expect("vectors") {
        let name = v["name"].as_str().expect("name");
        let pk: PublicKey = v["public_key"].as_str().expect("public_key").parse().expect(name);
        assert_eq!(pk.hash().to_string(), v["pkh"].as_str().expect("pkh"), "{name}: pkh");
        let msg = hex_field(v, "msg_hex");
        let sig = v["signature"].as_str().expect("signature");
        let ok = pk.verify_as(&msg, sig, BlsScheme::ProofOfPossession).is_ok();
        assert_eq!(ok, v["valid"] == Value::Bool(true), "{name}");
        if !ok {
            continue;
        }
        valid += 1;
        // Taquito signs with the proof-of-possession scheme: never valid as augmented, so a
        // `version=1` request answered with it is a bad signature.
        assert!(pk.verify_as(&msg, sig, BlsScheme::Augmented).is_err(), "{name}");
        // Taquito's generic encoding of the same bytes is accepted too.
        if let Some(generic) = v["generic_signature"].as_str() {
            pk.verify(&msg, generic)
                .unwrap_or_else(|e| panic!("{name}: generic encoding: {e}"));
        }
        let raw = tezos::decode_bls_signature(sig).expect("BLsig");
        let PublicKey::Bls(key) = &pk else {
            panic!("{name}: not a BLS key")
        };
        no_flip_verifies(&raw, |bad| key.verify(&msg, bad, BlsScheme::ProofOfPossession).is_ok());
        // The secret key Taquito used is octez's BLsk: the same key on our side.
        let sk = tezos::decode_bls_secret_key(v["secret_key"].as_str().expect("secret_key")).expect(name);
        let mut be = sk;
        be.reverse();
        let sk = blst::min_pk::SecretKey::from_bytes(&be).expect("scalar");
        assert_eq!(&sk.sk_to_pk().compress(), key.bytes(), "{name}: BLsk is little-endian");
    }
    assert!(valid >= 10, "too few valid Taquito vectors: {valid}");
    for k in file["keys"].as_array().expect("keys") {
        let pk: PublicKey = k["public_key"].as_str().expect("public_key").parse().expect("key");
        pk.verify_possession(k["proof_of_possession"].as_str().expect("proof"), None)
            .expect("Taquito's proof of possession");
    }
}

#[test]
fn public_keys_off_the_curve_or_the_identity_are_refused() {
    // 48 bytes with the compression bit set but x not on the curve.
    let mut off = [0u8; 48];
    off[0] = 0x80;
    off[47] = 5;
    assert!(BlsPublicKey::from_bytes(&off).is_err());
    // The point at infinity (compressed): a key every signature would "verify" under.
    let mut infinity = [0u8; 48];
    infinity[0] = 0xc0;
    assert!(BlsPublicKey::from_bytes(&infinity).is_err());
    assert!(BlsPublicKey::from_bytes(&[0u8; 47]).is_err());
}
