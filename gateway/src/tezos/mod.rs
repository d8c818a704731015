//! Tezos encodings and the little cryptography the gateway needs: base58check with Tezos
//! prefixes, key hashes (`tz1…`), public keys (`edpk…`), signatures (`edsig…`), chain ids
//! (`Net…`), and signature verification.
//!
//! For tz1/tz2/tz3 octez signs the blake2b-256 digest of the bytes (magic byte included), so
//! that is what [`PublicKey::verify`] checks: ed25519 (tz1), and ECDSA over that digest for
//! secp256k1 (tz2) and P-256 (tz3). tz4 (BLS12-381) signs the bytes themselves, under the
//! scheme the request's `version` selects ([`bls`]).

use std::fmt;
use std::str::FromStr;

use blake2::digest::consts::{U20, U32};
use blake2::{Blake2b, Digest as _};

pub mod bls;

pub use bls::{BlsPublicKey, BlsScheme};

/// base58check prefixes (decoded bytes), from octez `lib_crypto/base58.ml`.
mod prefix {
    pub const TZ1: &[u8] = &[6, 161, 159];
    pub const TZ2: &[u8] = &[6, 161, 161];
    pub const TZ3: &[u8] = &[6, 161, 164];
    pub const TZ4: &[u8] = &[6, 161, 166];
    pub const TZ5: &[u8] = &[6, 161, 169];
    pub const EDPK: &[u8] = &[13, 15, 37, 217];
    pub const SPPK: &[u8] = &[3, 254, 226, 86];
    pub const P2PK: &[u8] = &[3, 178, 139, 127];
    pub const BLPK: &[u8] = &[6, 149, 135, 204];
    pub const MDPK: &[u8] = &[13, 7, 237, 67];
    pub const EDSIG: &[u8] = &[9, 245, 205, 134, 18];
    pub const SPSIG: &[u8] = &[13, 115, 101, 19, 63];
    pub const P2SIG: &[u8] = &[54, 240, 44, 52];
    pub const BLSIG: &[u8] = &[40, 171, 64, 207];
    pub const SIG: &[u8] = &[4, 130, 43];
    pub const EDSK: &[u8] = &[13, 15, 58, 7];
    pub const BLSK: &[u8] = &[3, 150, 192, 40];
    pub const NET: &[u8] = &[87, 82, 0];
}

/// Why a Tezos value could not be decoded or checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TezosError {
    /// Not valid base58check (bad alphabet or checksum).
    #[error("invalid base58check encoding")]
    Base58,
    /// Valid base58check but not the expected prefix or length.
    #[error("unexpected prefix or length for a {0}")]
    Shape(&'static str),
    /// A curve the gateway recognises but cannot verify signatures for.
    #[error("signature verification for {0} keys is not supported")]
    UnsupportedCurve(Curve),
    /// The signature does not verify against the public key.
    #[error("signature does not verify")]
    BadSignature,
    /// A public key of the right length that is not a valid point (off the curve, outside
    /// the prime-order subgroup, or the identity).
    #[error("public key is not a valid point of its curve")]
    NotOnCurve,
}

/// The signature scheme of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Curve {
    /// tz1 / edpk / edsig.
    Ed25519,
    /// tz2 / sppk / spsig1.
    Secp256k1,
    /// tz3 / p2pk / p2sig.
    P256,
    /// tz4 / BLpk / BLsig.
    Bls,
    /// tz5 / mdpk / mdsig (ML-DSA-44, Ushuaia): recognised, never a consensus key, and not
    /// verifiable here.
    MlDsa44,
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Curve::Ed25519 => "ed25519",
            Curve::Secp256k1 => "secp256k1",
            Curve::P256 => "p256",
            Curve::Bls => "bls",
            Curve::MlDsa44 => "ml-dsa-44",
        })
    }
}

/// blake2b-256 of `bytes`: what octez signs, and the watermark's digest.
pub fn blake2b_256(bytes: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(bytes).into()
}

fn blake2b_160(bytes: &[u8]) -> [u8; 20] {
    Blake2b::<U20>::digest(bytes).into()
}

/// base58check-encode `payload` behind `prefix`.
fn b58_encode(prefix: &[u8], payload: &[u8]) -> String {
    let mut v = Vec::with_capacity(prefix.len() + payload.len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(payload);
    bs58::encode(v).with_check().into_string()
}

/// Decode base58check and strip one of `prefixes`, requiring `len` payload bytes.
fn b58_decode(s: &str, prefix: &[u8], len: usize, what: &'static str) -> Result<Vec<u8>, TezosError> {
    let raw = bs58::decode(s)
        .with_check(None)
        .into_vec()
        .map_err(|_| TezosError::Base58)?;
    match raw.strip_prefix(prefix) {
        Some(rest) if rest.len() == len => Ok(rest.to_vec()),
        _ => Err(TezosError::Shape(what)),
    }
}

/// A public key hash (`tz1…`, `tz2…`, `tz3…`, `tz4…`): the name of a signing key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pkh {
    /// Scheme of the key this hash names.
    pub curve: Curve,
    /// blake2b-160 of the public key bytes.
    pub hash: [u8; 20],
}

impl Pkh {
    fn prefix(curve: Curve) -> &'static [u8] {
        match curve {
            Curve::Ed25519 => prefix::TZ1,
            Curve::Secp256k1 => prefix::TZ2,
            Curve::P256 => prefix::TZ3,
            Curve::Bls => prefix::TZ4,
            Curve::MlDsa44 => prefix::TZ5,
        }
    }
}

impl FromStr for Pkh {
    type Err = TezosError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let curve = match s.get(..3) {
            Some("tz1") => Curve::Ed25519,
            Some("tz2") => Curve::Secp256k1,
            Some("tz3") => Curve::P256,
            Some("tz4") => Curve::Bls,
            Some("tz5") => Curve::MlDsa44,
            _ => return Err(TezosError::Shape("public key hash")),
        };
        let bytes = b58_decode(s, Pkh::prefix(curve), 20, "public key hash")?;
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&bytes);
        Ok(Pkh { curve, hash })
    }
}

impl fmt::Display for Pkh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so width and alignment work in tables (`watermark list`).
        f.pad(&b58_encode(Pkh::prefix(self.curve), &self.hash))
    }
}

impl fmt::Debug for Pkh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Pkh {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pkh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// A public key as the signer reports it (`GET /keys/<pkh>`).
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// `edpk…`
    Ed25519([u8; 32]),
    /// `BLpk…`, validated when parsed.
    Bls(BlsPublicKey),
    /// `sppk…`, `p2pk…` (compressed SEC1 points) and `mdpk…` (recognised only).
    Other {
        /// Scheme.
        curve: Curve,
        /// Raw key bytes.
        bytes: Vec<u8>,
        /// The text form, kept to answer clients unchanged.
        text: String,
    },
}

impl PublicKey {
    /// The key's hash, to check that a signer's key really is the one a request names.
    pub fn hash(&self) -> Pkh {
        match self {
            PublicKey::Ed25519(b) => Pkh {
                curve: Curve::Ed25519,
                hash: blake2b_160(b),
            },
            PublicKey::Bls(k) => Pkh {
                curve: Curve::Bls,
                hash: blake2b_160(k.bytes()),
            },
            PublicKey::Other { curve, bytes, .. } => Pkh {
                curve: *curve,
                hash: blake2b_160(bytes),
            },
        }
    }

    /// Verify a signature as octez makes it today: over blake2b-256 of `message` for
    /// tz1/tz2/tz3, over `message` itself under the proof-of-possession scheme for tz4.
    pub fn verify(&self, message: &[u8], signature: &str) -> Result<(), TezosError> {
        self.verify_as(message, signature, BlsScheme::ProofOfPossession)
    }

    /// [`PublicKey::verify`] with the BLS scheme the request asked for (ignored for other
    /// curves). A tz4 signature made under the other scheme does not verify.
    pub fn verify_as(&self, message: &[u8], signature: &str, scheme: BlsScheme) -> Result<(), TezosError> {
        match self {
            PublicKey::Bls(key) => key.verify(message, &decode_bls_signature(signature)?, scheme),
            PublicKey::Ed25519(pk) => {
                let sig = decode_ed25519_signature(signature)?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| TezosError::Shape("public key"))?;
                let sig = ed25519_dalek::Signature::from_bytes(&sig);
                // `verify_strict` rejects malleable and small-order edge cases that a
                // well-behaved signer never produces.
                key.verify_strict(&blake2b_256(message), &sig)
                    .map_err(|_| TezosError::BadSignature)?;
                Ok(())
            }
            PublicKey::Other {
                curve: Curve::Secp256k1,
                bytes,
                ..
            } => {
                use k256::ecdsa::signature::hazmat::PrehashVerifier as _;
                let sig = decode_ecdsa_signature(signature, prefix::SPSIG, "spsig1")?;
                let key =
                    k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|_| TezosError::Shape("public key"))?;
                let sig = k256::ecdsa::Signature::from_slice(&sig).map_err(|_| TezosError::BadSignature)?;
                // octez (libsecp256k1) only produces and accepts low-s signatures.
                if sig.normalize_s().is_some() {
                    return Err(TezosError::BadSignature);
                }
                key.verify_prehash(&blake2b_256(message), &sig)
                    .map_err(|_| TezosError::BadSignature)
            }
            PublicKey::Other {
                curve: Curve::P256,
                bytes,
                ..
            } => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
                let sig = decode_ecdsa_signature(signature, prefix::P2SIG, "p2sig")?;
                let key =
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|_| TezosError::Shape("public key"))?;
                let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| TezosError::BadSignature)?;
                key.verify_prehash(&blake2b_256(message), &sig)
                    .map_err(|_| TezosError::BadSignature)
            }
            PublicKey::Other { curve, .. } => Err(TezosError::UnsupportedCurve(*curve)),
        }
    }

    /// Verify a BLS proof of possession (`/bls_prove_possession`): over this key's own
    /// compressed bytes, or over `over` when the request named another public key.
    pub fn verify_possession(&self, proof: &str, over: Option<&BlsPublicKey>) -> Result<(), TezosError> {
        let PublicKey::Bls(key) = self else {
            return Err(TezosError::Shape("BLS public key"));
        };
        let over = over.unwrap_or(key);
        key.verify_possession(&decode_bls_signature(proof)?, over.bytes())
    }
}

/// Decode a 96-byte BLS signature given as `BLsig…` or in the generic encoding.
pub fn decode_bls_signature(s: &str) -> Result<[u8; 96], TezosError> {
    let bytes = if s.starts_with("BLsig") {
        b58_decode(s, prefix::BLSIG, 96, "BLS signature")?
    } else {
        b58_decode(s, prefix::SIG, 96, "BLS signature")?
    };
    let mut out = [0u8; 96];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Encode a 96-byte BLS signature as `BLsig…`.
pub fn encode_bls_signature(sig: &[u8; 96]) -> String {
    b58_encode(prefix::BLSIG, sig)
}

/// Encode a 96-byte BLS signature in the generic encoding (the `sig` prefix bytes).
pub fn encode_generic_bls_signature(sig: &[u8; 96]) -> String {
    b58_encode(prefix::SIG, sig)
}

/// Decode a 64-byte ECDSA signature given with its own prefix or as the generic `sig…`.
fn decode_ecdsa_signature(s: &str, own: &[u8], own_text: &str) -> Result<[u8; 64], TezosError> {
    let bytes = if s.starts_with(own_text) {
        b58_decode(s, own, 64, "signature")?
    } else if s.starts_with("sig") {
        b58_decode(s, prefix::SIG, 64, "signature")?
    } else {
        return Err(TezosError::Shape("ECDSA signature"));
    };
    let mut out = [0u8; 64];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Encode a public key of any scheme from its raw bytes (for tests and tools).
pub fn encode_public_key(curve: Curve, bytes: &[u8]) -> String {
    let pre = match curve {
        Curve::Ed25519 => prefix::EDPK,
        Curve::Secp256k1 => prefix::SPPK,
        Curve::P256 => prefix::P2PK,
        Curve::Bls => prefix::BLPK,
        Curve::MlDsa44 => prefix::MDPK,
    };
    b58_encode(pre, bytes)
}

/// Encode a 64-byte signature with the scheme's prefix (`edsig`, `spsig1`, `p2sig`); the
/// other schemes' signatures are not 64 bytes long, so they get the generic `sig` prefix.
pub fn encode_signature(curve: Curve, sig: &[u8; 64]) -> String {
    let pre = match curve {
        Curve::Ed25519 => prefix::EDSIG,
        Curve::Secp256k1 => prefix::SPSIG,
        Curve::P256 => prefix::P2SIG,
        Curve::Bls | Curve::MlDsa44 => prefix::SIG,
    };
    b58_encode(pre, sig)
}

impl FromStr for PublicKey {
    type Err = TezosError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (curve, pre, len) = match s.get(..4) {
            Some("edpk") => {
                let b = b58_decode(s, prefix::EDPK, 32, "public key")?;
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                return Ok(PublicKey::Ed25519(k));
            }
            Some("BLpk") => {
                let b = b58_decode(s, prefix::BLPK, 48, "public key")?;
                return BlsPublicKey::from_bytes(&b).map(PublicKey::Bls);
            }
            Some("sppk") => (Curve::Secp256k1, prefix::SPPK, 33),
            Some("p2pk") => (Curve::P256, prefix::P2PK, 33),
            Some("mdpk") => (Curve::MlDsa44, prefix::MDPK, 1312),
            _ => return Err(TezosError::Shape("public key")),
        };
        let bytes = b58_decode(s, pre, len, "public key")?;
        Ok(PublicKey::Other {
            curve,
            bytes,
            text: s.to_string(),
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Ed25519(b) => f.write_str(&b58_encode(prefix::EDPK, b)),
            PublicKey::Bls(k) => f.write_str(&b58_encode(prefix::BLPK, k.bytes())),
            PublicKey::Other { text, .. } => f.write_str(text),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Decode a 64-byte ed25519 signature given as `edsig…` or the generic `sig…`.
fn decode_ed25519_signature(s: &str) -> Result<[u8; 64], TezosError> {
    let bytes = if s.starts_with("edsig") {
        b58_decode(s, prefix::EDSIG, 64, "signature")?
    } else if s.starts_with("sig") {
        b58_decode(s, prefix::SIG, 64, "signature")?
    } else {
        return Err(TezosError::Shape("ed25519 signature"));
    };
    let mut out = [0u8; 64];
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Check that `s` is a well-formed signature of some scheme (prefix and length).
pub fn check_signature_shape(s: &str) -> Result<(), TezosError> {
    decode_signature(s).map(|_| ())
}

/// The raw bytes of a signature of any scheme (`edsig`, `spsig1`, `p2sig`, `BLsig`, or the
/// generic `sig` of 64 or 96 bytes), as the socket protocol carries it.
pub fn decode_signature(s: &str) -> Result<Vec<u8>, TezosError> {
    let known: [(&str, &[u8], usize); 6] = [
        ("edsig", prefix::EDSIG, 64),
        ("spsig1", prefix::SPSIG, 64),
        ("p2sig", prefix::P2SIG, 64),
        ("BLsig", prefix::BLSIG, 96),
        ("sig", prefix::SIG, 64),
        ("sig", prefix::SIG, 96),
    ];
    let mut found = Err(TezosError::Shape("signature"));
    for (text, pre, len) in known {
        if s.starts_with(text) {
            found = b58_decode(s, pre, len, "signature");
            if found.is_ok() {
                break;
            }
        }
    }
    found
}

/// Encode a signature of unknown scheme (64 bytes) in the generic `sig…` encoding, or a
/// 96-byte one as `BLsig…`: how a socket request's authentication signature, which carries
/// no scheme, is written for the HTTP protocol.
pub fn encode_untyped_signature(sig: &[u8]) -> Option<String> {
    match sig.len() {
        64 => Some(b58_encode(prefix::SIG, sig)),
        96 => Some(b58_encode(prefix::BLSIG, sig)),
        _ => None,
    }
}

/// Encode a raw ed25519 signature as `edsig…`.
pub fn encode_ed25519_signature(sig: &[u8; 64]) -> String {
    b58_encode(prefix::EDSIG, sig)
}

/// Encode an ed25519 public key as `edpk…`.
pub fn encode_ed25519_public_key(pk: &[u8; 32]) -> String {
    b58_encode(prefix::EDPK, pk)
}

/// Encode an ed25519 seed as `edsk…` (the 32-byte form octez-client imports).
pub fn encode_ed25519_seed(seed: &[u8; 32]) -> String {
    b58_encode(prefix::EDSK, seed)
}

/// Decode an `edsk…` seed (32-byte form).
pub fn decode_ed25519_seed(s: &str) -> Result<[u8; 32], TezosError> {
    let b = b58_decode(s, prefix::EDSK, 32, "secret key")?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&b);
    Ok(out)
}

/// Decode a `BLsk…` secret key: 32 bytes, a little-endian scalar (as octez writes it).
pub fn decode_bls_secret_key(s: &str) -> Result<[u8; 32], TezosError> {
    let b = b58_decode(s, prefix::BLSK, 32, "BLS secret key")?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&b);
    Ok(out)
}

/// Encode a BLS secret scalar (32 bytes, little-endian) as `BLsk…`.
pub fn encode_bls_secret_key(scalar_le: &[u8; 32]) -> String {
    b58_encode(prefix::BLSK, scalar_le)
}

/// A chain id: the 4 bytes at offsets 1..4 of every consensus payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(pub [u8; 4]);

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&b58_encode(prefix::NET, &self.0))
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ChainId {
    type Err = TezosError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = b58_decode(s, prefix::NET, 4, "chain id")?;
        Ok(ChainId([b[0], b[1], b[2], b[3]]))
    }
}

impl serde::Serialize for ChainId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChainId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    #[test]
    fn mainnet_chain_id_round_trips() {
        // Mainnet's chain id bytes are 7a06a770.
        let id = ChainId([0x7a, 0x06, 0xa7, 0x70]);
        assert_eq!(id.to_string(), "NetXdQprcVkpaWU");
        assert_eq!("NetXdQprcVkpaWU".parse::<ChainId>().unwrap(), id);
    }

    #[test]
    fn ed25519_key_hash_and_signature_round_trip() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk_bytes = sk.verifying_key().to_bytes();
        let pk: PublicKey = encode_ed25519_public_key(&pk_bytes).parse().unwrap();
        let pkh = pk.hash();
        assert!(pkh.to_string().starts_with("tz1"));
        assert_eq!(pkh.to_string().parse::<Pkh>().unwrap(), pkh);
        let msg = b"\x13hello";
        let sig = encode_ed25519_signature(&sk.sign(&blake2b_256(msg)).to_bytes());
        assert!(sig.starts_with("edsig"));
        check_signature_shape(&sig).unwrap();
        pk.verify(msg, &sig).unwrap();
        assert_eq!(pk.verify(b"\x13other", &sig), Err(TezosError::BadSignature));
    }

    #[test]
    fn rejects_malformed_values() {
        assert!("tz1abc".parse::<Pkh>().is_err());
        assert!("KT1VGTGwxkEFWYxsaQvzhNkoYYuHuTqGmeKJ".parse::<Pkh>().is_err());
        assert!("edpkfoo".parse::<PublicKey>().is_err());
        assert!(check_signature_shape("edsigXYZ").is_err());
    }

    #[test]
    fn secp256k1_and_p256_signatures_verify() {
        use k256::ecdsa::signature::hazmat::PrehashSigner as _;
        let msg = b"\x13some attestation bytes";
        let digest = blake2b_256(msg);

        let sk = k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pk_bytes = sk.verifying_key().to_encoded_point(true);
        let pk: PublicKey = encode_public_key(Curve::Secp256k1, pk_bytes.as_bytes())
            .parse()
            .unwrap();
        assert!(pk.to_string().starts_with("sppk"));
        assert!(pk.hash().to_string().starts_with("tz2"));
        let sig: k256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let sig = sig.normalize_s().unwrap_or(sig);
        let text = encode_signature(Curve::Secp256k1, &sig.to_bytes().into());
        assert!(text.starts_with("spsig1"), "{text}");
        pk.verify(msg, &text).unwrap();
        assert_eq!(pk.verify(b"\x13other", &text), Err(TezosError::BadSignature));
        // The high-s twin of a valid signature is refused, as octez does.
        let (r, s) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        let high_text = encode_signature(Curve::Secp256k1, &high.to_bytes().into());
        assert_eq!(pk.verify(msg, &high_text), Err(TezosError::BadSignature));

        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let pk_bytes = sk.verifying_key().to_encoded_point(true);
        let pk: PublicKey = encode_public_key(Curve::P256, pk_bytes.as_bytes()).parse().unwrap();
        assert!(pk.to_string().starts_with("p2pk"));
        assert!(pk.hash().to_string().starts_with("tz3"));
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let text = encode_signature(Curve::P256, &sig.to_bytes().into());
        assert!(text.starts_with("p2sig"), "{text}");
        pk.verify(msg, &text).unwrap();
        assert_eq!(pk.verify(b"\x13other", &text), Err(TezosError::BadSignature));
    }

    #[test]
    fn known_tz1_parses() {
        // octez's bootstrap1 key and hash.
        let pk: PublicKey = "edpkuBknW28nW72KG6RoHtYW7p12T6GKc7nAbwYX5m8Wd9sDVC9yav"
            .parse()
            .unwrap();
        assert_eq!(pk.hash().to_string(), "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx");
    }
}
