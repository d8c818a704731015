//! Strict parser for the bytes a baker asks to sign.
//!
//! Layouts are in `protocol.md` section 2. The parser fails closed: a consensus payload whose
//! length, tag or fitness does not fit a known layout is refused, never guessed at, because
//! the level and round it reads are what the high watermark protects.

use std::fmt;

use crate::tezos::{ChainId, Curve};

/// The three watermarked kinds of consensus operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Magic byte 0x11.
    Block,
    /// Magic byte 0x12.
    Preattestation,
    /// Magic byte 0x13 (tags 21, 23, 41 alike: one kind for slashing).
    Attestation,
}

impl Kind {
    /// All kinds, in magic-byte order.
    pub const ALL: [Kind; 3] = [Kind::Block, Kind::Preattestation, Kind::Attestation];

    /// Lower-case name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Block => "block",
            Kind::Preattestation => "preattestation",
            Kind::Attestation => "attestation",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// What a request asks to sign, as far as policy and the watermark care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A block, preattestation or attestation: watermarked.
    Consensus(Consensus),
    /// 0x03: a manager operation (transfer, delegation, reveal…). Policy only.
    Generic,
    /// 0x05: packed Michelson data. Policy only.
    Packed,
}

/// Which encoding a consensus payload uses; octez picks it from the signing key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A block header (0x11): the same for every key type.
    Block,
    /// Tags 20, 21, 23: with a slot, for tz1/tz2/tz3 keys.
    Slotted,
    /// Tags 40, 41: no slot, for tz4 (BLS) keys.
    Bls,
}

/// The fields of a consensus payload the watermark is keyed and ordered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consensus {
    /// Which watermark the payload counts against.
    pub kind: Kind,
    /// Chain id at offsets 1..4.
    pub chain: ChainId,
    /// Block level.
    pub level: i32,
    /// Round (for blocks, the fitness round, never the payload round).
    pub round: i32,
    /// Encoding, which must match the key type ([`parse_for`]).
    pub layout: Layout,
    /// Operation tag (0 for blocks).
    pub tag: u8,
}

/// Why a payload was refused. `Copy + Eq` so tests can assert the exact reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Nothing to sign.
    #[error("empty payload")]
    Empty,
    /// 0x01 / 0x02: pre-Tenderbake formats, never valid today.
    #[error("obsolete pre-Tenderbake magic byte 0x{0:02x}")]
    Obsolete(u8),
    /// 0x04: an authentication envelope, never something to sign.
    #[error("magic byte 0x04 is an authentication envelope, not a payload to sign")]
    AuthEnvelope,
    /// Any other first byte.
    #[error("unknown magic byte 0x{0:02x}")]
    UnknownMagic(u8),
    /// A consensus payload of the wrong length for its layout.
    #[error("{kind} payload has length {len}, expected {expected}")]
    Length {
        /// Kind being parsed.
        kind: Kind,
        /// Actual length.
        len: usize,
        /// Expected length (the layout's).
        expected: usize,
    },
    /// An operation tag that does not belong to the magic byte.
    #[error("{kind} payload has unknown operation tag {tag}")]
    Tag {
        /// Kind being parsed.
        kind: Kind,
        /// The tag byte found.
        tag: u8,
    },
    /// A block whose fitness is not the Tenderbake layout.
    #[error("block fitness is malformed ({0})")]
    Fitness(&'static str),
    /// A negative level or round.
    #[error("negative level or round")]
    Negative,
    /// The DAL attestation bitset is not a well-formed Zarith natural.
    #[error("malformed DAL bitset")]
    DalBitset,
    /// Tags 30/31: aggregates the block producer builds itself, never sent to a signer.
    #[error("{kind} tag {tag} is an aggregate built by the block producer: never signed")]
    Aggregate {
        /// Kind being parsed.
        kind: Kind,
        /// The tag byte found.
        tag: u8,
    },
    /// A consensus layout that does not belong to the key type (octez picks the layout from
    /// the key: tags 40/41 for tz4, 20/21/23 for tz1/tz2/tz3).
    #[error("{kind} tag {tag} is not the layout for {curve} keys (tz4: tags 40/41; tz1/tz2/tz3: 20/21/23)")]
    LayoutForKey {
        /// Kind being parsed.
        kind: Kind,
        /// The tag byte found.
        tag: u8,
        /// The key's scheme.
        curve: Curve,
    },
}

/// Parse the bytes of a signing request for a key of type `curve`: [`parse`], then the
/// consensus layout must be the one octez uses for that key type.
pub fn parse_for(bytes: &[u8], curve: Curve) -> Result<Payload, PayloadError> {
    let payload = parse(bytes)?;
    if let Payload::Consensus(c) = payload {
        let fits = match c.layout {
            Layout::Block => true,
            Layout::Bls => curve == Curve::Bls,
            Layout::Slotted => curve != Curve::Bls,
        };
        if !fits {
            return Err(PayloadError::LayoutForKey {
                kind: c.kind,
                tag: c.tag,
                curve,
            });
        }
    }
    Ok(payload)
}

/// Parse the bytes of a signing request (magic byte included), whatever the key.
pub fn parse(bytes: &[u8]) -> Result<Payload, PayloadError> {
    let (&magic, _) = bytes.split_first().ok_or(PayloadError::Empty)?;
    match magic {
        0x11 => parse_block(bytes).map(Payload::Consensus),
        0x12 => parse_consensus_op(bytes, Kind::Preattestation).map(Payload::Consensus),
        0x13 => parse_consensus_op(bytes, Kind::Attestation).map(Payload::Consensus),
        0x03 => Ok(Payload::Generic),
        0x05 => Ok(Payload::Packed),
        0x01 | 0x02 => Err(PayloadError::Obsolete(magic)),
        0x04 => Err(PayloadError::AuthEnvelope),
        other => Err(PayloadError::UnknownMagic(other)),
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be_i32(bytes: &[u8], at: usize) -> Option<i32> {
    be_u32(bytes, at).map(|v| v as i32)
}

fn chain_of(bytes: &[u8]) -> ChainId {
    // Callers checked the length first; a shorter slice cannot reach here.
    let mut id = [0u8; 4];
    id.copy_from_slice(&bytes[1..5]);
    ChainId(id)
}

fn non_negative(level: i32, round: i32) -> Result<(i32, i32), PayloadError> {
    if level < 0 || round < 0 {
        Err(PayloadError::Negative)
    } else {
        Ok((level, round))
    }
}

/// Offset of the fitness length in a block header.
const FITNESS_AT: usize = 83;

/// Block header (0x11): shell header then Tenderbake protocol data.
///
/// `magic(1) chain(4) level(4) proto(1) predecessor(32) timestamp(8) validation_pass(1)
/// operations_hash(32) fitness(4 + F) context(32) payload_hash(32) payload_round(4)
/// pow_nonce(8) seed_nonce_hash(1 [+ 32]) per_block_votes(1)`.
fn parse_block(bytes: &[u8]) -> Result<Consensus, PayloadError> {
    let kind = Kind::Block;
    let short = |expected| PayloadError::Length {
        kind,
        len: bytes.len(),
        expected,
    };
    let f = be_u32(bytes, FITNESS_AT).ok_or(short(FITNESS_AT + 4))? as usize;
    if f != 33 && f != 37 {
        return Err(PayloadError::Fitness("length is neither 33 nor 37"));
    }
    let fitness_start = FITNESS_AT + 4;
    let fitness = bytes
        .get(fitness_start..fitness_start + f)
        .ok_or(short(fitness_start + f))?;
    let level = be_i32(bytes, 5).ok_or(short(9))?;
    let round = check_fitness(fitness, level)?;
    // After the fitness: context(32) payload_hash(32) payload_round(4) pow_nonce(8), then the
    // seed nonce option tag.
    let seed_tag_at = fitness_start + f + 32 + 32 + 4 + 8;
    let expected = match bytes.get(seed_tag_at) {
        Some(0x00) => seed_tag_at + 1 + 1,
        Some(0xff) => seed_tag_at + 1 + 32 + 1,
        Some(_) => return Err(PayloadError::Fitness("seed nonce option tag is neither 0x00 nor 0xff")),
        None => return Err(short(seed_tag_at + 2)),
    };
    if bytes.len() != expected {
        return Err(short(expected));
    }
    let (level, round) = non_negative(level, round)?;
    Ok(Consensus {
        kind,
        chain: chain_of(bytes),
        level,
        round,
        layout: Layout::Block,
        tag: 0,
    })
}

/// Walk the Tenderbake fitness `[version][level][locked_round?][predecessor_round][round]`,
/// each element length-prefixed, and return the round (the last element).
fn check_fitness(fitness: &[u8], level: i32) -> Result<i32, PayloadError> {
    let mut elements = Vec::with_capacity(5);
    let mut at = 0;
    while at < fitness.len() {
        let len = be_u32(fitness, at).ok_or(PayloadError::Fitness("truncated element length"))? as usize;
        let start = at + 4;
        let elem = fitness
            .get(
                start
                    ..start
                        .checked_add(len)
                        .ok_or(PayloadError::Fitness("element too long"))?,
            )
            .ok_or(PayloadError::Fitness("element overruns the fitness"))?;
        elements.push(elem);
        at = start + len;
    }
    match elements.as_slice() {
        [version, lvl, locked, pred_round, round]
            if version.len() == 1
                && lvl.len() == 4
                && (locked.is_empty() || locked.len() == 4)
                && pred_round.len() == 4
                && round.len() == 4 =>
        {
            if be_i32(lvl, 0) != Some(level) {
                return Err(PayloadError::Fitness("fitness level differs from the header level"));
            }
            be_i32(round, 0).ok_or(PayloadError::Fitness("round"))
        }
        _ => Err(PayloadError::Fitness("not the Tenderbake layout")),
    }
}

/// Preattestation (0x12) and attestation (0x13):
/// `magic(1) chain(4) branch(32) tag(1)` then the tag's fields.
fn parse_consensus_op(bytes: &[u8], kind: Kind) -> Result<Consensus, PayloadError> {
    const TAG_AT: usize = 37;
    let tag = *bytes.get(TAG_AT).ok_or(PayloadError::Length {
        kind,
        len: bytes.len(),
        expected: TAG_AT + 1,
    })?;
    // (level offset, length of the fixed part); tag 23 adds a Zarith DAL bitset after it.
    let (level_at, fixed_len, layout) = match (kind, tag) {
        // slot(2) level(4) round(4) payload_hash(32)
        (Kind::Preattestation, 20) | (Kind::Attestation, 21 | 23) => (40, 80, Layout::Slotted),
        // level(4) round(4) payload_hash(32): tz4 (BLS) form, no slot
        (Kind::Preattestation, 40) | (Kind::Attestation, 41) => (38, 78, Layout::Bls),
        (Kind::Preattestation, 30) | (Kind::Attestation, 31) => return Err(PayloadError::Aggregate { kind, tag }),
        _ => return Err(PayloadError::Tag { kind, tag }),
    };
    let expected = if tag == 23 {
        let dal = bytes.get(fixed_len..).unwrap_or_default();
        fixed_len + zarith_len(dal).ok_or(PayloadError::DalBitset)?
    } else {
        fixed_len
    };
    if bytes.len() != expected {
        return Err(PayloadError::Length {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    let level = be_i32(bytes, level_at).ok_or(PayloadError::Length {
        kind,
        len: bytes.len(),
        expected,
    })?;
    let round = be_i32(bytes, level_at + 4).ok_or(PayloadError::Length {
        kind,
        len: bytes.len(),
        expected,
    })?;
    let (level, round) = non_negative(level, round)?;
    Ok(Consensus {
        kind,
        chain: chain_of(bytes),
        level,
        round,
        layout,
        tag,
    })
}

/// Length of the Zarith natural at the start of `bytes` (7 bits a byte, high bit = more),
/// or `None` if it never ends.
fn zarith_len(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| b & 0x80 == 0).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attestation(tag: u8, level: i32, round: i32) -> Vec<u8> {
        let mut v = vec![0x13, 0x7a, 0x06, 0xa7, 0x70];
        v.extend_from_slice(&[0xaa; 32]);
        v.push(tag);
        if tag != 41 && tag != 40 && tag != 31 && tag != 30 {
            v.extend_from_slice(&[0, 3]);
        }
        v.extend_from_slice(&level.to_be_bytes());
        v.extend_from_slice(&round.to_be_bytes());
        v.extend_from_slice(&[0xbb; 32]);
        v
    }

    #[test]
    fn attestation_layouts() {
        let p = parse(&attestation(21, 100, 2)).unwrap();
        assert_eq!(
            p,
            Payload::Consensus(Consensus {
                kind: Kind::Attestation,
                chain: ChainId([0x7a, 0x06, 0xa7, 0x70]),
                level: 100,
                round: 2,
                layout: Layout::Slotted,
                tag: 21,
            })
        );
        let mut dal = attestation(23, 5, 0);
        dal.extend_from_slice(&[0x81, 0x01]);
        assert!(matches!(
            parse(&dal),
            Ok(Payload::Consensus(Consensus { level: 5, .. }))
        ));
        assert!(matches!(
            parse(&attestation(41, 7, 1)),
            Ok(Payload::Consensus(Consensus { level: 7, round: 1, .. }))
        ));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(&[]), Err(PayloadError::Empty));
        assert_eq!(parse(&[0x01, 0]), Err(PayloadError::Obsolete(1)));
        assert_eq!(parse(&[0x04]), Err(PayloadError::AuthEnvelope));
        assert_eq!(parse(&[0x42]), Err(PayloadError::UnknownMagic(0x42)));
        assert_eq!(parse(&[0x03, 1, 2]), Ok(Payload::Generic));
        assert_eq!(parse(&[0x05, 1]), Ok(Payload::Packed));
        let mut pre = attestation(21, 1, 1);
        pre[0] = 0x12;
        assert_eq!(
            parse(&pre),
            Err(PayloadError::Tag {
                kind: Kind::Preattestation,
                tag: 21
            })
        );
        let mut dal = attestation(23, 5, 0);
        dal.push(0x81);
        assert_eq!(parse(&dal), Err(PayloadError::DalBitset));
        assert_eq!(parse(&attestation(21, -1, 0)), Err(PayloadError::Negative));
        let mut agg = attestation(30, 1, 0);
        agg[0] = 0x12;
        assert_eq!(
            parse(&agg),
            Err(PayloadError::Aggregate {
                kind: Kind::Preattestation,
                tag: 30
            })
        );
        assert_eq!(
            parse(&attestation(31, 1, 0)),
            Err(PayloadError::Aggregate {
                kind: Kind::Attestation,
                tag: 31
            })
        );
    }

    #[test]
    fn layouts_are_bound_to_the_key_type() {
        let tz4 = attestation(41, 7, 1);
        let mut tz4_pre = attestation(40, 7, 1);
        tz4_pre[0] = 0x12;
        let slotted = attestation(21, 7, 1);
        let mut dal = attestation(23, 5, 0);
        dal.push(0x01);
        for bls in [&tz4, &tz4_pre] {
            assert!(parse_for(bls, Curve::Bls).is_ok());
            for curve in [Curve::Ed25519, Curve::Secp256k1, Curve::P256] {
                assert!(matches!(
                    parse_for(bls, curve),
                    Err(PayloadError::LayoutForKey { curve: c, .. }) if c == curve
                ));
            }
        }
        for other in [&slotted, &dal] {
            assert!(parse_for(other, Curve::Ed25519).is_ok());
            assert!(matches!(
                parse_for(other, Curve::Bls),
                Err(PayloadError::LayoutForKey { curve: Curve::Bls, .. })
            ));
        }
        // Generic operations and packed data carry no layout: policy decides.
        assert_eq!(parse_for(&[0x03, 1], Curve::Bls), Ok(Payload::Generic));
    }
}
