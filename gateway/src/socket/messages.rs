//! The socket protocol's requests and answers (octez `signer_messages.ml`) and their binary
//! encodings.

use crate::tezos::{BlsPublicKey, Curve, Pkh, PublicKey};

use super::wire::{self, checked, put_bool, put_dynamic, put_pkh, put_public_key, DecodeError, EncodeError, Reader};

/// The signature version octez sends with a tz4 key in a sign request
/// (`Signature.version`, an `int8` of 0–3). The HTTP protocol's `?version=N` maps onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureVersion {
    /// `Signature.V0`.
    V0,
    /// `Signature.V1` (Rio: augmented BLS).
    V1,
    /// `Signature.V2` (Seoul: BLS proof of possession).
    V2,
    /// `Signature.V3`, octez's latest, sent when no version was asked for.
    V3,
}

impl SignatureVersion {
    /// What octez sends for a tz4 key when the caller gave no version (`V_latest`).
    pub const LATEST: SignatureVersion = SignatureVersion::V3;

    /// The version's number, as on the wire and in `?version=N`.
    pub fn number(self) -> u8 {
        match self {
            SignatureVersion::V0 => 0,
            SignatureVersion::V1 => 1,
            SignatureVersion::V2 => 2,
            SignatureVersion::V3 => 3,
        }
    }

    /// The version numbered `n`, if octez defines one.
    pub fn from_number(n: u8) -> Option<SignatureVersion> {
        Some(match n {
            0 => SignatureVersion::V0,
            1 => SignatureVersion::V1,
            2 => SignatureVersion::V2,
            3 => SignatureVersion::V3,
            _ => return None,
        })
    }
}

/// A signature as the socket protocol carries it: raw bytes, kind told by length only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// 64 bytes: ed25519, secp256k1 or p256; which one is the signing key's curve, not on the
    /// wire (octez decodes these as "unknown").
    Generic([u8; 64]),
    /// 96 bytes: a compressed BLS12-381 G2 point (not checked here; verification does).
    Bls([u8; 96]),
    /// 2,420 bytes: ML-DSA-44 (tz5).
    MlDsa44(Box<[u8; 2420]>),
}

impl Signature {
    /// The raw bytes, as sent.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Signature::Generic(b) => b,
            Signature::Bls(b) => b,
            Signature::MlDsa44(b) => &b[..],
        }
    }
}

/// A sign request (tag 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    /// The key to sign with.
    pub pkh: Pkh,
    /// The signature version, sent only with a tz4 (or tz5) key as octez's client does: it is
    /// not sent for tz1–tz3 keys, and a tz4 request without one sends
    /// [`SignatureVersion::LATEST`]. Decoding keeps what came: octez's decoder accepts the
    /// versioned form (tag 3) around any key hash, so a decoded tz1 request may carry one.
    pub version: Option<SignatureVersion>,
    /// The bytes to sign, magic byte included.
    pub data: Vec<u8>,
    /// `-A` authentication: a signature by an authorized key over
    /// [`authentication_payload`].
    pub authentication: Option<Signature>,
}

/// A deterministic-nonce request (tags 3 and 4): like a sign request, with a plain key hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedRequest {
    /// The key.
    pub pkh: Pkh,
    /// The bytes the nonce is derived from.
    pub data: Vec<u8>,
    /// `-A` authentication, as for [`SignRequest::authentication`].
    pub authentication: Option<Signature>,
}

/// A BLS proof-of-possession request (tag 7).
#[derive(Clone, PartialEq, Eq)]
pub struct BlsProvePossession {
    /// The tz4 key.
    pub pkh: Pkh,
    /// Prove possession over this public key instead of the key's own (`?bls_pk=` over HTTP).
    pub override_pk: Option<BlsPublicKey>,
}

impl std::fmt::Debug for BlsProvePossession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `BlsPublicKey` has no `Debug`: show the key as octez names it.
        let override_pk = self.override_pk.clone().map(|k| PublicKey::Bls(k).to_string());
        f.debug_struct("BlsProvePossession")
            .field("pkh", &self.pkh)
            .field("override_pk", &override_pk)
            .finish()
    }
}

/// A request, with the tag octez gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// 0: sign bytes.
    Sign(SignRequest),
    /// 1: the public key of a key hash.
    PublicKey(Pkh),
    /// 2: the keys allowed to authenticate requests; octez's client asks before every sign.
    AuthorizedKeys,
    /// 3: a deterministic nonce.
    DeterministicNonce(AuthenticatedRequest),
    /// 4: the hash of a deterministic nonce.
    DeterministicNonceHash(AuthenticatedRequest),
    /// 5: whether the key supports deterministic nonces.
    SupportsDeterministicNonces(Pkh),
    /// 6: every key the signer holds (refused unless the signer allows it).
    KnownKeys,
    /// 7: a BLS proof of possession (refused unless the signer allows it).
    BlsProvePossession(BlsProvePossession),
}

/// Which request an answer is for: an answer's layout depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// [`Request::Sign`].
    Sign,
    /// [`Request::PublicKey`].
    PublicKey,
    /// [`Request::AuthorizedKeys`].
    AuthorizedKeys,
    /// [`Request::DeterministicNonce`].
    DeterministicNonce,
    /// [`Request::DeterministicNonceHash`].
    DeterministicNonceHash,
    /// [`Request::SupportsDeterministicNonces`].
    SupportsDeterministicNonces,
    /// [`Request::KnownKeys`].
    KnownKeys,
    /// [`Request::BlsProvePossession`].
    BlsProvePossession,
}

impl RequestKind {
    /// The kind's name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Sign => "sign",
            RequestKind::PublicKey => "public_key",
            RequestKind::AuthorizedKeys => "authorized_keys",
            RequestKind::DeterministicNonce => "deterministic_nonce",
            RequestKind::DeterministicNonceHash => "deterministic_nonce_hash",
            RequestKind::SupportsDeterministicNonces => "supports_deterministic_nonces",
            RequestKind::KnownKeys => "known_keys",
            RequestKind::BlsProvePossession => "bls_prove_possession",
        }
    }

    /// The request's tag on the wire.
    pub fn tag(self) -> u8 {
        match self {
            RequestKind::Sign => 0,
            RequestKind::PublicKey => 1,
            RequestKind::AuthorizedKeys => 2,
            RequestKind::DeterministicNonce => 3,
            RequestKind::DeterministicNonceHash => 4,
            RequestKind::SupportsDeterministicNonces => 5,
            RequestKind::KnownKeys => 6,
            RequestKind::BlsProvePossession => 7,
        }
    }

    fn from_tag(tag: u8) -> Option<RequestKind> {
        Some(match tag {
            0 => RequestKind::Sign,
            1 => RequestKind::PublicKey,
            2 => RequestKind::AuthorizedKeys,
            3 => RequestKind::DeterministicNonce,
            4 => RequestKind::DeterministicNonceHash,
            5 => RequestKind::SupportsDeterministicNonces,
            6 => RequestKind::KnownKeys,
            7 => RequestKind::BlsProvePossession,
            _ => return None,
        })
    }
}

impl Request {
    /// Which kind of request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Sign(_) => RequestKind::Sign,
            Request::PublicKey(_) => RequestKind::PublicKey,
            Request::AuthorizedKeys => RequestKind::AuthorizedKeys,
            Request::DeterministicNonce(_) => RequestKind::DeterministicNonce,
            Request::DeterministicNonceHash(_) => RequestKind::DeterministicNonceHash,
            Request::SupportsDeterministicNonces(_) => RequestKind::SupportsDeterministicNonces,
            Request::KnownKeys => RequestKind::KnownKeys,
            Request::BlsProvePossession(_) => RequestKind::BlsProvePossession,
        }
    }
}

/// The answer to [`Request::AuthorizedKeys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizedKeys {
    /// Tag 0: the signer does not ask for authentication.
    NoAuthentication,
    /// Tag 1: requests must be signed by one of these keys.
    Keys(Vec<Pkh>),
}

/// An error answer: octez's error trace, one entry per error, in the order sent. Each entry is the error's JSON in json-data-encoding's BSON form, kept as received
/// (this codec checks the lengths, not the BSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorTrace(pub Vec<Vec<u8>>);

/// An answer. Every kind but [`Response::Error`] answers exactly one [`RequestKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// To [`Request::Sign`].
    Signature(Signature),
    /// To [`Request::PublicKey`].
    PublicKey(PublicKey),
    /// To [`Request::AuthorizedKeys`].
    AuthorizedKeys(AuthorizedKeys),
    /// To [`Request::DeterministicNonce`].
    DeterministicNonce(Vec<u8>),
    /// To [`Request::DeterministicNonceHash`].
    DeterministicNonceHash(Vec<u8>),
    /// To [`Request::SupportsDeterministicNonces`].
    SupportsDeterministicNonces(bool),
    /// To [`Request::KnownKeys`].
    KnownKeys(Vec<Pkh>),
    /// To [`Request::BlsProvePossession`]: 96 bytes, a compressed G2 point.
    BlsProofOfPossession([u8; 96]),
    /// The request failed, whatever it was.
    Error(ErrorTrace),
}

impl Response {
    /// The request kind this answers; `None` for an error, which answers any.
    pub fn kind(&self) -> Option<RequestKind> {
        Some(match self {
            Response::Signature(_) => RequestKind::Sign,
            Response::PublicKey(_) => RequestKind::PublicKey,
            Response::AuthorizedKeys(_) => RequestKind::AuthorizedKeys,
            Response::DeterministicNonce(_) => RequestKind::DeterministicNonce,
            Response::DeterministicNonceHash(_) => RequestKind::DeterministicNonceHash,
            Response::SupportsDeterministicNonces(_) => RequestKind::SupportsDeterministicNonces,
            Response::KnownKeys(_) => RequestKind::KnownKeys,
            Response::BlsProofOfPossession(_) => RequestKind::BlsProvePossession,
            Response::Error(_) => return None,
        })
    }
}

/// The bytes an authorized key signs to authenticate a request (octez `to_sign`):
/// `0x04 ‖ tag ‖ key hash (21 bytes) ‖ data`, with tag 1 for a sign request, 2 for a
/// deterministic nonce, 3 for its hash. `None` for the kinds that carry no authentication.
pub fn authentication_payload(kind: RequestKind, pkh: &Pkh, data: &[u8]) -> Option<Vec<u8>> {
    let tag = match kind {
        RequestKind::Sign => 1,
        RequestKind::DeterministicNonce => 2,
        RequestKind::DeterministicNonceHash => 3,
        _ => return None,
    };
    let mut out = Vec::with_capacity(2 + 21 + data.len());
    out.extend_from_slice(&[0x04, tag]);
    put_pkh(&mut out, pkh);
    out.extend_from_slice(data);
    Some(out)
}

/// Encode a request (the frame's contents, without its length).
pub fn encode_request(request: &Request) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![request.kind().tag()];
    match request {
        Request::Sign(r) => {
            put_sign_key(&mut out, &r.pkh, r.version)?;
            put_dynamic(&mut out, &r.data)?;
            put_authentication(&mut out, r.authentication.as_ref());
        }
        Request::DeterministicNonce(r) | Request::DeterministicNonceHash(r) => {
            put_pkh(&mut out, &r.pkh);
            put_dynamic(&mut out, &r.data)?;
            put_authentication(&mut out, r.authentication.as_ref());
        }
        Request::PublicKey(pkh) | Request::SupportsDeterministicNonces(pkh) => put_pkh(&mut out, pkh),
        Request::AuthorizedKeys | Request::KnownKeys => {}
        Request::BlsProvePossession(r) => {
            put_pkh(&mut out, &r.pkh);
            put_bool(&mut out, r.override_pk.is_some());
            if let Some(pk) = &r.override_pk {
                out.extend_from_slice(pk.bytes());
            }
        }
    }
    checked(out)
}

/// `signer_messages.pkh_encoding`: tags 0–2 a bare 20-byte hash; tag 3 a full key hash and
/// the version.
fn put_sign_key(out: &mut Vec<u8>, pkh: &Pkh, version: Option<SignatureVersion>) -> Result<(), EncodeError> {
    let version = match (pkh.curve, version) {
        (Curve::Ed25519 | Curve::Secp256k1 | Curve::P256, _) => {
            put_pkh(out, pkh);
            return Ok(());
        }
        (Curve::Bls | Curve::MlDsa44, Some(v)) => v,
        (Curve::Bls, None) => SignatureVersion::LATEST,
        (Curve::MlDsa44, None) => return Err(EncodeError::Tz5WithoutVersion),
    };
    out.push(3);
    put_pkh(out, pkh);
    out.push(version.number());
    Ok(())
}

/// An optional variable-size field at the end: the bytes if present, nothing otherwise.
fn put_authentication(out: &mut Vec<u8>, signature: Option<&Signature>) {
    if let Some(s) = signature {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Decode a request from a whole frame.
pub fn decode_request(frame: &[u8]) -> Result<Request, DecodeError> {
    let mut r = Reader::new(frame);
    let tag = r.u8("request")?;
    let kind = RequestKind::from_tag(tag).ok_or(DecodeError::UnknownTag { what: "request", tag })?;
    let request = match kind {
        RequestKind::Sign => {
            let (pkh, version) = sign_key(&mut r)?;
            let data = r.dynamic("sign data")?.to_vec();
            let authentication = authentication(&mut r)?;
            Request::Sign(SignRequest {
                pkh,
                version,
                data,
                authentication,
            })
        }
        RequestKind::DeterministicNonce | RequestKind::DeterministicNonceHash => {
            let pkh = r.pkh("key hash")?;
            let data = r.dynamic("nonce data")?.to_vec();
            let authentication = authentication(&mut r)?;
            let req = AuthenticatedRequest {
                pkh,
                data,
                authentication,
            };
            if kind == RequestKind::DeterministicNonce {
                Request::DeterministicNonce(req)
            } else {
                Request::DeterministicNonceHash(req)
            }
        }
        RequestKind::PublicKey => Request::PublicKey(r.pkh("key hash")?),
        RequestKind::SupportsDeterministicNonces => Request::SupportsDeterministicNonces(r.pkh("key hash")?),
        RequestKind::AuthorizedKeys => Request::AuthorizedKeys,
        RequestKind::KnownKeys => Request::KnownKeys,
        RequestKind::BlsProvePossession => {
            let pkh = r.pkh("key hash")?;
            let override_pk = if r.bool("override_pk option")? {
                Some(r.bls_key("override_pk")?)
            } else {
                None
            };
            Request::BlsProvePossession(BlsProvePossession { pkh, override_pk })
        }
    };
    r.finish("request")?;
    Ok(request)
}

fn sign_key(r: &mut Reader<'_>) -> Result<(Pkh, Option<SignatureVersion>), DecodeError> {
    const WHAT: &str = "sign key hash";
    let tag = r.u8(WHAT)?;
    let curve = match tag {
        0 => Curve::Ed25519,
        1 => Curve::Secp256k1,
        2 => Curve::P256,
        3 => {
            let pkh = r.pkh(WHAT)?;
            let value = r.u8("signature version")?;
            let version = SignatureVersion::from_number(value).ok_or(DecodeError::Invalid {
                what: "signature version",
                value,
            })?;
            return Ok((pkh, Some(version)));
        }
        tag => return Err(DecodeError::UnknownTag { what: WHAT, tag }),
    };
    Ok((
        Pkh {
            curve,
            hash: r.array(WHAT)?,
        },
        None,
    ))
}

/// The optional authentication signature: whatever is left of the request.
fn authentication(r: &mut Reader<'_>) -> Result<Option<Signature>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    wire::signature(r.rest(), "authentication signature").map(Some)
}

/// Encode an answer (the frame's contents, without its length).
pub fn encode_response(response: &Response) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8];
    match response {
        Response::Signature(s) => out.extend_from_slice(s.as_bytes()),
        Response::PublicKey(k) => put_public_key(&mut out, k)?,
        Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication) => out.push(0),
        Response::AuthorizedKeys(AuthorizedKeys::Keys(keys)) => {
            out.push(1);
            put_pkh_list(&mut out, keys)?;
        }
        Response::DeterministicNonce(b) | Response::DeterministicNonceHash(b) => put_dynamic(&mut out, b)?,
        Response::SupportsDeterministicNonces(b) => put_bool(&mut out, *b),
        Response::KnownKeys(keys) => put_pkh_list(&mut out, keys)?,
        Response::BlsProofOfPossession(p) => out.extend_from_slice(p),
        Response::Error(ErrorTrace(errors)) => {
            out[0] = 1;
            let mut list = Vec::new();
            for e in errors {
                put_dynamic(&mut list, e)?;
            }
            put_dynamic(&mut out, &list)?;
        }
    }
    checked(out)
}

fn put_pkh_list(out: &mut Vec<u8>, keys: &[Pkh]) -> Result<(), EncodeError> {
    let mut list = Vec::with_capacity(keys.len().saturating_mul(21));
    for k in keys {
        put_pkh(&mut list, k);
    }
    put_dynamic(out, &list)
}

/// Decode the answer to a request of kind `kind` from a whole frame.
pub fn decode_response(kind: RequestKind, frame: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader::new(frame);
    let response = match r.u8("result")? {
        0 => decode_ok(kind, &mut r)?,
        1 => {
            let mut list = Reader::new(r.dynamic("error trace")?);
            let mut errors = Vec::new();
            while !list.is_empty() {
                errors.push(list.dynamic("error")?.to_vec());
            }
            Response::Error(ErrorTrace(errors))
        }
        tag => return Err(DecodeError::UnknownTag { what: "result", tag }),
    };
    r.finish("response")?;
    Ok(response)
}

fn decode_ok(kind: RequestKind, r: &mut Reader<'_>) -> Result<Response, DecodeError> {
    Ok(match kind {
        RequestKind::Sign => Response::Signature(wire::signature(r.rest(), "signature")?),
        RequestKind::PublicKey => Response::PublicKey(r.public_key("public key")?),
        RequestKind::AuthorizedKeys => match r.u8("authorized keys")? {
            0 => Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication),
            1 => Response::AuthorizedKeys(AuthorizedKeys::Keys(pkh_list(r, "authorized keys")?)),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "authorized keys",
                    tag,
                })
            }
        },
        RequestKind::DeterministicNonce => Response::DeterministicNonce(r.dynamic("nonce")?.to_vec()),
        RequestKind::DeterministicNonceHash => Response::DeterministicNonceHash(r.dynamic("nonce hash")?.to_vec()),
        RequestKind::SupportsDeterministicNonces => Response::SupportsDeterministicNonces(r.bool("bool")?),
        RequestKind::KnownKeys => Response::KnownKeys(pkh_list(r, "known keys")?),
        RequestKind::BlsProvePossession => Response::BlsProofOfPossession(r.array("proof of possession")?),
    })
}

/// A `list` of key hashes: a length, then 21-byte entries filling it exactly. The vector
/// grows with entries read, never from the length.
fn pkh_list(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<Pkh>, DecodeError> {
    let mut list = Reader::new(r.dynamic(what)?);
    let mut keys = Vec::new();
    while !list.is_empty() {
        keys.push(list.pkh(what)?);
    }
    Ok(keys)
}
