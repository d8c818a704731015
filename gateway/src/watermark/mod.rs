//! High watermark: nothing at or below a signed (level, round) is signed again, except the
//! very same bytes. Rules in `protocol.md` section 3.
//!
//! INTERFACE SKETCH (to be completed): types and the trait every backend implements.

use futures_util::future::BoxFuture;

use crate::payload::Kind;
use crate::tezos::{ChainId, Pkh};

/// What a watermark is kept for: one (chain, key, kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MarkKey {
    /// Chain id from the payload.
    pub chain: ChainId,
    /// Signing key named in the request path.
    pub pkh: Pkh,
    /// Block, preattestation or attestation.
    pub kind: Kind,
}

/// A request to sign at (level, round) bytes whose blake2b-256 is `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRequest {
    /// Which mark.
    pub key: MarkKey,
    /// Level read from the payload.
    pub level: i32,
    /// Round read from the payload.
    pub round: i32,
    /// blake2b-256 of the whole payload.
    pub digest: [u8; 32],
}

/// The stored mark.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// Highest level signed.
    pub level: i32,
    /// Highest round signed at that level.
    pub round: i32,
    /// Digest of the bytes signed there; `None` after an operator `set`.
    pub digest: Option<[u8; 32]>,
    /// Signature released for those bytes, once known.
    pub signature: Option<String>,
}

/// Outcome of an allowed check-and-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new mark is durable: forward to a signer.
    Recorded,
    /// The very same bytes were recorded before: answer with this signature if known, else
    /// forward the same bytes again (safe: identical bytes are not a double signature).
    Repeat(Option<String>),
}
