//! Builders for the bytes a baker asks to sign (layouts in `protocol.md` section 2).

use anyhow::Context as _;

/// A chain id for tests (the bytes of `NetXdQprcVkpaWU`, mainnet).
pub const TEST_CHAIN: [u8; 4] = [0x7a, 0x06, 0xa7, 0x70];

/// Where the vectors live (`tests/vectors/payloads.json` of the workspace).
pub const VECTORS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/payloads.json");

/// A preattestation (0x12) or attestation (0x13): the slot-carrying layout (tags 20, 21) or
/// the tz4 (BLS) layout without a slot (tags 40, 41).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsensusOp {
    /// 0x12 or 0x13.
    pub magic: u8,
    /// Chain id (offsets 1..4).
    pub chain: [u8; 4],
    /// Every byte of the 32-byte branch.
    pub branch_byte: u8,
    /// Operation tag: 20 (preattestation) or 21 (attestation); 40 and 41 for tz4 keys.
    pub tag: u8,
    /// Slot (not written for tags 40 and 41).
    pub slot: u16,
    /// Level.
    pub level: i32,
    /// Round.
    pub round: i32,
    /// Every byte of the 32-byte block payload hash: change it to get different bytes at the
    /// same (level, round).
    pub payload_hash_byte: u8,
}

impl ConsensusOp {
    /// The 80 bytes `magic chain(4) branch(32) tag slot(2) level(4) round(4) payload_hash(32)`,
    /// or 78 without the slot for tags 40 and 41.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(80);
        v.push(self.magic);
        v.extend_from_slice(&self.chain);
        v.extend_from_slice(&[self.branch_byte; 32]);
        v.push(self.tag);
        if !matches!(self.tag, 40 | 41) {
            v.extend_from_slice(&self.slot.to_be_bytes());
        }
        v.extend_from_slice(&self.level.to_be_bytes());
        v.extend_from_slice(&self.round.to_be_bytes());
        v.extend_from_slice(&[self.payload_hash_byte; 32]);
        v
    }
}

/// A consensus operation with branch bytes 0xbb and slot 0.
fn consensus_op(magic: u8, tag: u8, chain: [u8; 4], level: i32, round: i32, variant: u8) -> Vec<u8> {
    ConsensusOp {
        magic,
        chain,
        branch_byte: 0xbb,
        tag,
        slot: 0,
        level,
        round,
        payload_hash_byte: variant,
    }
    .bytes()
}

/// An attestation (0x13, tag 21, slot 0, branch bytes 0xbb); `variant` fills the payload hash,
/// so two variants at one (level, round) are a double attestation.
pub fn attestation(chain: [u8; 4], level: i32, round: i32, variant: u8) -> Vec<u8> {
    consensus_op(0x13, 21, chain, level, round, variant)
}

/// A preattestation (0x12, tag 20), as [`attestation`].
pub fn preattestation(chain: [u8; 4], level: i32, round: i32, variant: u8) -> Vec<u8> {
    consensus_op(0x12, 20, chain, level, round, variant)
}

/// A tz4 attestation (0x13, tag 41: no slot), as [`attestation`]. The consensus key and its
/// companion key receive these very bytes.
pub fn bls_attestation(chain: [u8; 4], level: i32, round: i32, variant: u8) -> Vec<u8> {
    consensus_op(0x13, 41, chain, level, round, variant)
}

/// A tz4 preattestation (0x12, tag 40), as [`attestation`].
pub fn bls_preattestation(chain: [u8; 4], level: i32, round: i32, variant: u8) -> Vec<u8> {
    consensus_op(0x12, 40, chain, level, round, variant)
}

/// A generic operation (0x03): branch then an opaque body. Not watermarked; a policy matter.
pub fn generic_operation(variant: u8) -> Vec<u8> {
    let mut v = vec![0x03];
    v.extend_from_slice(&[0xbb; 32]);
    // A reveal-shaped tail; the gateway does not parse it.
    v.extend_from_slice(&[0x6b, variant, 0x00, 0x01, 0x02, 0x03]);
    v
}

/// The hex of vector `name` from `tests/vectors/payloads.json`, decoded.
pub fn vector(name: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(VECTORS_PATH).with_context(|| format!("reading {VECTORS_PATH}"))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {VECTORS_PATH}"))?;
    let entry = json["payloads"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .with_context(|| format!("no vector named {name:?} in {VECTORS_PATH}"))?;
    let hex_str = entry["hex"]
        .as_str()
        .with_context(|| format!("vector {name:?} has no hex"))?;
    hex::decode(hex_str).with_context(|| format!("vector {name:?}: bad hex"))
}

/// The block vector `name` (magic 0x11) as is.
pub fn block_from_vector(name: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = vector(name)?;
    anyhow::ensure!(bytes.first() == Some(&0x11), "vector {name:?} is not a block");
    Ok(bytes)
}

/// A Tenderbake block (0x11, 198 bytes, fitness without locked round) at (level, round) on
/// `chain`, built from vector `signatory-A1`; `variant` changes the context hash, so two
/// variants at one (level, round) are a double bake.
pub fn block(chain: [u8; 4], level: i32, round: i32, variant: u8) -> anyhow::Result<Vec<u8>> {
    let mut b = block_from_vector("signatory-A1")?;
    // Offsets for fitness length 33 (checked): header level 5..9, fitness 87..120 with its
    // level element at 96..100 and its round (the last element) at 116..120, context 120..152.
    anyhow::ensure!(
        b.len() == 198 && b[83..87] == [0, 0, 0, 33],
        "signatory-A1 changed shape"
    );
    b[1..5].copy_from_slice(&chain);
    b[5..9].copy_from_slice(&level.to_be_bytes());
    b[96..100].copy_from_slice(&level.to_be_bytes());
    b[116..120].copy_from_slice(&round.to_be_bytes());
    b[120] = variant;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signer_gateway::payload::{parse, Kind, Payload};

    fn consensus(bytes: &[u8]) -> (Kind, i32, i32, [u8; 4]) {
        match parse(bytes).unwrap() {
            Payload::Consensus(c) => (c.kind, c.level, c.round, c.chain.0),
            other => panic!("not consensus: {other:?}"),
        }
    }

    #[test]
    fn builders_parse_as_intended() {
        let a = attestation(TEST_CHAIN, 42, 3, 1);
        assert_eq!(a.len(), 80);
        assert_eq!(consensus(&a), (Kind::Attestation, 42, 3, TEST_CHAIN));
        assert_ne!(a, attestation(TEST_CHAIN, 42, 3, 2));
        let p = preattestation(TEST_CHAIN, 7, 0, 1);
        assert_eq!(consensus(&p), (Kind::Preattestation, 7, 0, TEST_CHAIN));
        let b = block(TEST_CHAIN, 1000, 2, 9).unwrap();
        assert_eq!(consensus(&b), (Kind::Block, 1000, 2, TEST_CHAIN));
        assert_eq!(parse(&generic_operation(1)).unwrap(), Payload::Generic);
        assert_eq!(
            consensus(&block_from_vector("tacoinfra-block-locked-round").unwrap()).2,
            6
        );
        assert!(vector("no-such-vector").is_err());
    }
}
