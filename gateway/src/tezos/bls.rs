//! BLS12-381 signatures of tz4 keys, as octez makes them (protocol.md §5): the min-pk variant
//! (48-byte compressed G1 public keys, 96-byte compressed G2 signatures) over the signed bytes
//! themselves, never a digest, with the scheme chosen by the request's `version`.
//!
//! Every point is group- and subgroup-checked (`blst`'s `key_validate` and signature checks),
//! so an identity key, an off-curve point or a small-subgroup signature never verifies.

use blst::min_pk;
use blst::BLST_ERROR;

use super::TezosError;

/// Domain separation tag of the augmented scheme (octez before Seoul, `version=1`).
pub const DST_AUGMENTED: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_AUG_";
/// Domain separation tag of the proof-of-possession scheme (Seoul onwards, `version` 2, 3 or none).
pub const DST_POP: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";
/// Domain separation tag of a proof of possession itself (`/bls_prove_possession`).
pub const DST_POP_PROVE: &[u8] = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

/// Which BLS signature scheme a tz4 signature is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlsScheme {
    /// Augmented: message = compressed public key ‖ bytes (Rio clients, `version=1`).
    Augmented,
    /// Proof of possession: message = bytes (Seoul and later, `version` 2, 3 or none).
    ProofOfPossession,
}

impl BlsScheme {
    /// The other scheme: a signature valid under it is a wrong answer.
    pub fn other(self) -> BlsScheme {
        match self {
            BlsScheme::Augmented => BlsScheme::ProofOfPossession,
            BlsScheme::ProofOfPossession => BlsScheme::Augmented,
        }
    }

    /// Its domain separation tag.
    pub fn dst(self) -> &'static [u8] {
        match self {
            BlsScheme::Augmented => DST_AUGMENTED,
            BlsScheme::ProofOfPossession => DST_POP,
        }
    }

    /// Lower-case name for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            BlsScheme::Augmented => "augmented",
            BlsScheme::ProofOfPossession => "proof-of-possession",
        }
    }
}

/// A BLS12-381 public key that passed the group and subgroup checks (and is not the identity).
#[derive(Clone)]
pub struct BlsPublicKey {
    bytes: [u8; 48],
    key: min_pk::PublicKey,
}

impl PartialEq for BlsPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for BlsPublicKey {}

impl BlsPublicKey {
    /// Decompress and validate 48 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<BlsPublicKey, TezosError> {
        let arr: [u8; 48] = bytes.try_into().map_err(|_| TezosError::Shape("BLS public key"))?;
        let key = min_pk::PublicKey::key_validate(&arr).map_err(|_| TezosError::NotOnCurve)?;
        Ok(BlsPublicKey { bytes: arr, key })
    }

    /// The 48 compressed bytes.
    pub fn bytes(&self) -> &[u8; 48] {
        &self.bytes
    }

    /// Verify a 96-byte signature of `message` under `scheme`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 96], scheme: BlsScheme) -> Result<(), TezosError> {
        let aug: &[u8] = match scheme {
            BlsScheme::Augmented => &self.bytes,
            BlsScheme::ProofOfPossession => &[],
        };
        self.verify_dst(message, signature, scheme.dst(), aug)
    }

    /// Verify a proof of possession: a signature under [`DST_POP_PROVE`] over `over` (48
    /// compressed public key bytes: this key's own, or the one the request named).
    pub fn verify_possession(&self, proof: &[u8; 96], over: &[u8; 48]) -> Result<(), TezosError> {
        self.verify_dst(over, proof, DST_POP_PROVE, &[])
    }

    fn verify_dst(&self, message: &[u8], signature: &[u8; 96], dst: &[u8], aug: &[u8]) -> Result<(), TezosError> {
        // `from_bytes` only decompresses; `verify(sig_groupcheck = true, …)` adds the subgroup
        // check. The key was validated when it was parsed.
        let sig = min_pk::Signature::from_bytes(signature).map_err(|_| TezosError::BadSignature)?;
        match sig.verify(true, message, dst, aug, &self.key, false) {
            BLST_ERROR::BLST_SUCCESS => Ok(()),
            _ => Err(TezosError::BadSignature),
        }
    }
}
