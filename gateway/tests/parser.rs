//! The strict payload parser against real vectors, their mutations, and arbitrary bytes.

use proptest::prelude::*;
use signer_gateway::payload::{parse, Kind, Payload, PayloadError};
use signer_gateway::tezos::blake2b_256;

struct Vector {
    name: String,
    bytes: Vec<u8>,
    kind: Kind,
    chain: [u8; 4],
    level: i32,
    round: i32,
    digest: [u8; 32],
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/payloads.json");
    let text = std::fs::read_to_string(path).expect("vectors file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("vectors json");
    let list = json["payloads"].as_array().expect("payloads array");
    list.iter()
        .map(|v| {
            let chain = hex::decode(v["chain_id"].as_str().unwrap()).unwrap();
            Vector {
                name: v["name"].as_str().unwrap().to_string(),
                bytes: hex::decode(v["hex"].as_str().unwrap()).unwrap(),
                kind: v["kind"].as_str().unwrap().parse().unwrap(),
                chain: chain.try_into().unwrap(),
                level: v["level"].as_i64().unwrap() as i32,
                round: v["round"].as_i64().unwrap() as i32,
                digest: hex::decode(v["blake2b_256"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
            }
        })
        .collect()
}

#[test]
fn every_vector_parses_to_its_stated_fields() {
    let vs = vectors();
    assert!(vs.len() >= 20, "expected the full vector set, got {}", vs.len());
    for v in &vs {
        let Ok(Payload::Consensus(c)) = parse(&v.bytes) else {
            panic!("{}: did not parse as consensus: {:?}", v.name, parse(&v.bytes));
        };
        assert_eq!(c.kind, v.kind, "{}", v.name);
        assert_eq!(c.chain.0, v.chain, "{}", v.name);
        assert_eq!((c.level, c.round), (v.level, v.round), "{}", v.name);
        assert_eq!(blake2b_256(&v.bytes), v.digest, "{}", v.name);
    }
}

#[test]
fn truncated_and_extended_payloads_are_refused() {
    for v in vectors() {
        for cut in 1..v.bytes.len() {
            assert!(
                parse(&v.bytes[..cut]).is_err(),
                "{}: truncated to {cut} bytes parsed",
                v.name
            );
        }
        let mut longer = v.bytes.clone();
        longer.push(0);
        assert!(parse(&longer).is_err(), "{}: extended by one byte parsed", v.name);
    }
}

#[test]
fn wrong_tags_are_refused() {
    for v in vectors().into_iter().filter(|v| v.kind != Kind::Block) {
        let valid: &[u8] = match v.kind {
            Kind::Preattestation => &[20, 40],
            _ => &[21, 23, 41],
        };
        for tag in 0..=255u8 {
            if valid.contains(&tag) {
                continue;
            }
            let mut m = v.bytes.clone();
            m[37] = tag;
            // Tags 30/31 are aggregates: refused as such, never signed.
            let aggregate = matches!((v.kind, tag), (Kind::Preattestation, 30) | (Kind::Attestation, 31));
            let want = if aggregate {
                PayloadError::Aggregate { kind: v.kind, tag }
            } else {
                PayloadError::Tag { kind: v.kind, tag }
            };
            assert_eq!(parse(&m), Err(want), "{} tag {tag}", v.name);
        }
    }
}

#[test]
fn wrong_fitness_lengths_are_refused() {
    for v in vectors().into_iter().filter(|v| v.kind == Kind::Block) {
        for f in [0u32, 1, 29, 32, 34, 36, 38, 41, u32::MAX] {
            let mut m = v.bytes.clone();
            m[83..87].copy_from_slice(&f.to_be_bytes());
            assert!(parse(&m).is_err(), "{}: fitness length {f} parsed", v.name);
        }
        // A fitness whose level disagrees with the header is malformed.
        let mut m = v.bytes.clone();
        m[8] ^= 1;
        assert!(matches!(parse(&m), Err(PayloadError::Fitness(_))), "{}", v.name);
    }
}

#[test]
fn locked_round_block_uses_fitness_round_not_payload_round() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "tacoinfra-block-locked-round")
        .unwrap();
    let Ok(Payload::Consensus(c)) = parse(&v.bytes) else {
        panic!()
    };
    assert_eq!(c.round, 6);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn consensus_magic_with_arbitrary_tail_never_panics(
        magic in 0x11u8..=0x13,
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![magic];
        bytes.extend(tail);
        let _ = parse(&bytes);
    }

    #[test]
    fn single_byte_flips_in_vectors_never_panic(idx in 0usize..250, val in any::<u8>()) {
        for v in vectors() {
            let mut m = v.bytes.clone();
            if idx < m.len() { m[idx] = val; }
            let _ = parse(&m);
        }
    }
}
