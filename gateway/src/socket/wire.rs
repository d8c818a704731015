//! The data-encoding primitives the socket messages are made of: a bounds-checked reader, the
//! writers, and key hashes, public keys and signatures in their binary forms.

use crate::tezos::{encode_public_key, BlsPublicKey, Curve, Pkh, PublicKey};

use super::messages::Signature;
use super::MAX_FRAME;

/// Why a message could not be decoded. `what` names the field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ends before a field does (or a length prefix claims more than is left).
    #[error("truncated {what}: needs {needed} bytes, {left} left")]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message (or in the enclosing length-prefixed field).
        left: usize,
    },
    /// A tag this protocol does not define.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which union.
        what: &'static str,
        /// Tag read.
        tag: u8,
    },
    /// Bytes left over after a complete message or length-prefixed field.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes {
        /// What was complete.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A signature whose length is none of 64, 96 or 2,420 bytes.
    #[error("{what}: {len} bytes is not a signature length")]
    SignatureLength {
        /// Field being read.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A value outside its domain (a `bool` or option byte, a signature version).
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Field being read.
        what: &'static str,
        /// Byte read.
        value: u8,
    },
    /// 48 bytes that are not a valid BLS12-381 public key.
    #[error("{what} is not a valid BLS12-381 public key")]
    BadBlsKey {
        /// Field being read.
        what: &'static str,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would not fit in one frame.
    #[error("message of {len} bytes does not fit in a frame (at most {max})", max = MAX_FRAME)]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A public key whose byte length does not match its curve.
    #[error("{curve} public key of {len} bytes")]
    KeyLength {
        /// Its curve.
        curve: Curve,
        /// Its length.
        len: usize,
    },
    /// octez's sign request has no form for a tz5 key without a signature version.
    #[error("a sign request for a tz5 key needs a signature version")]
    Tz5WithoutVersion,
}

/// Reads fields off a message, checking every length against what is left before using it:
/// nothing is allocated from a length that was not checked.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let Some((head, rest)) = self.buf.split_at_checked(n) else {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left: self.buf.len(),
            });
        };
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    /// data-encoding `bool`, and the presence byte of an optional fixed-size field.
    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0x00 => Ok(false),
            0xff => Ok(true),
            value => Err(DecodeError::Invalid { what, value }),
        }
    }

    /// A `dynamic_size` field: a big-endian `u32` length, then that many bytes.
    pub(super) fn dynamic(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_be_bytes(self.array(what)?);
        // A length past what is left fails here, before anything is read or allocated.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, what)
    }

    /// Everything left (a variable-size field at the end of a message).
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The end of a message or of a length-prefixed field: nothing may be left.
    pub(super) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, count }),
        }
    }

    pub(super) fn pkh(&mut self, what: &'static str) -> Result<Pkh, DecodeError> {
        let tag = self.u8(what)?;
        let curve = curve_of_tag(tag).ok_or(DecodeError::UnknownTag { what, tag })?;
        Ok(Pkh {
            curve,
            hash: self.array(what)?,
        })
    }

    pub(super) fn public_key(&mut self, what: &'static str) -> Result<PublicKey, DecodeError> {
        let tag = self.u8(what)?;
        let curve = curve_of_tag(tag).ok_or(DecodeError::UnknownTag { what, tag })?;
        match curve {
            Curve::Ed25519 => Ok(PublicKey::Ed25519(self.array(what)?)),
            Curve::Bls => self.bls_key(what).map(PublicKey::Bls),
            other => {
                let bytes = self.take(key_len(other), what)?.to_vec();
                Ok(PublicKey::Other {
                    curve: other,
                    text: encode_public_key(other, &bytes),
                    bytes,
                })
            }
        }
    }

    /// A BLS public key (48 bytes), checked to be a valid point as octez checks it.
    pub(super) fn bls_key(&mut self, what: &'static str) -> Result<BlsPublicKey, DecodeError> {
        BlsPublicKey::from_bytes(self.take(48, what)?).map_err(|_| DecodeError::BadBlsKey { what })
    }
}

/// Decode a signature from all of `bytes`: its length says which kind it is.
pub(super) fn signature(bytes: &[u8], what: &'static str) -> Result<Signature, DecodeError> {
    let wrong = || DecodeError::SignatureLength { what, len: bytes.len() };
    match bytes.len() {
        64 => bytes.try_into().map(Signature::Generic).map_err(|_| wrong()),
        96 => bytes.try_into().map(Signature::Bls).map_err(|_| wrong()),
        2420 => <[u8; 2420]>::try_from(bytes)
            .map(|s| Signature::MlDsa44(Box::new(s)))
            .map_err(|_| wrong()),
        _ => Err(wrong()),
    }
}

fn curve_of_tag(tag: u8) -> Option<Curve> {
    Some(match tag {
        0 => Curve::Ed25519,
        1 => Curve::Secp256k1,
        2 => Curve::P256,
        3 => Curve::Bls,
        4 => Curve::MlDsa44,
        _ => return None,
    })
}

pub(super) fn tag_of_curve(curve: Curve) -> u8 {
    match curve {
        Curve::Ed25519 => 0,
        Curve::Secp256k1 => 1,
        Curve::P256 => 2,
        Curve::Bls => 3,
        Curve::MlDsa44 => 4,
    }
}

/// Public key length by curve (`Signature.Public_key.encoding`).
fn key_len(curve: Curve) -> usize {
    match curve {
        Curve::Ed25519 => 32,
        Curve::Secp256k1 | Curve::P256 => 33,
        Curve::Bls => 48,
        Curve::MlDsa44 => 1312,
    }
}

pub(super) fn put_pkh(out: &mut Vec<u8>, pkh: &Pkh) {
    out.push(tag_of_curve(pkh.curve));
    out.extend_from_slice(&pkh.hash);
}

pub(super) fn put_public_key(out: &mut Vec<u8>, key: &PublicKey) -> Result<(), EncodeError> {
    let (curve, bytes): (Curve, &[u8]) = match key {
        PublicKey::Ed25519(b) => (Curve::Ed25519, b),
        PublicKey::Bls(k) => (Curve::Bls, k.bytes()),
        PublicKey::Other { curve, bytes, .. } => (*curve, bytes),
    };
    if bytes.len() != key_len(curve) {
        return Err(EncodeError::KeyLength {
            curve,
            len: bytes.len(),
        });
    }
    out.push(tag_of_curve(curve));
    out.extend_from_slice(bytes);
    Ok(())
}

/// A `dynamic_size` field. Anything longer than a frame fails later in [`checked`] anyway;
/// refusing it here keeps the length conversion exact.
pub(super) fn put_dynamic(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EncodeError> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|_| bytes.len() <= MAX_FRAME)
        .ok_or(EncodeError::TooLarge { len: bytes.len() })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

pub(super) fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xff } else { 0x00 });
}

/// A finished message, refused if it would not fit in a frame.
pub(super) fn checked(out: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    if out.len() > MAX_FRAME {
        return Err(EncodeError::TooLarge { len: out.len() });
    }
    Ok(out)
}
