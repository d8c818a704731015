//! octez's binary "socket" signer protocol (`tcp://host:port/tz…`, `unix:…`): the messages,
//! their encodings and the framing, for both sides (a client of a socket signer, and a socket
//! front end for bakers).
//!
//! The codec (`messages.rs`, `frame.rs`) serves both sides: `upstream.rs` makes a socket signer
//! one more signer of the pool (`protocol: socket`), and `front.rs` serves bakers that use a
//! `tcp://` key URI.
//!
//! # Wire format
//!
//! Read from tezos/tezos-mirror at commit `d26a8bef82159434e5a6db6a6d329f29dc8172dd`:
//! `src/lib_signer_services/signer_messages.ml` (the messages),
//! `src/lib_signer_backends/unix/socket.ml` (the client), `src/bin_signer/socket_daemon.ml`
//! (the server), `src/lib_base/unix/socket.ml` (`send`/`recv`), `src/lib_crypto/signature.ml`
//! and `signature_v3.ml` (keys and signatures), `src/lib_error_monad/monad_maker.ml`
//! (`result_encoding`) and `data-encoding/src` (the binary rules).
//!
//! - **Frame**: a big-endian `u16` length, then that many bytes holding one message. A
//!   message is therefore at most 65,535 bytes ([`MAX_FRAME`]); octez refuses to send longer.
//!   The reader decodes exactly the frame and refuses extra bytes.
//! - **Connection**: octez's client opens one connection per operation and sends two
//!   requests on it (`Authorized_keys`, then the operation); the server loops on a connection
//!   until it fails or closes, so a connection can be kept and reused. A request that does not
//!   decode ends the connection without an answer.
//! - **Request**: a `u8` tag, then the fields ([`Request`], [`RequestKind`] for the tags).
//! - **Answer**: a `u8` tag, `0` then the result, or `1` then an error trace
//!   ([`ErrorTrace`]). Its layout depends on the request it answers, so decoding one needs
//!   the [`RequestKind`].
//! - **data-encoding rules used**: `bytes` and `list` carry a big-endian `u32` length
//!   (at most 2^30 − 1); `bool` is `0x00`/`0xff`; an optional fixed-size field is a `0x00`
//!   (absent) or `0xff` (present) byte then the value; an optional variable-size field at the
//!   end of a message (the authentication signature) is present iff bytes remain; a `union`
//!   case is a `u8` tag; a `constant` takes no bytes.
//! - **Key hash** (`Signature.Public_key_hash`): a tag (0 ed25519, 1 secp256k1, 2 p256,
//!   3 bls, 4 ml-dsa-44) and 20 bytes. **Public key**: the same tags, then 32, 33, 33, 48 or
//!   1,312 bytes.
//! - **Signature** (`Signature.encoding`): the raw bytes with no tag and no length, told apart
//!   by length only: 64 bytes for ed25519, secp256k1 and p256 alike (octez decodes them as
//!   "unknown", the curve is the key's), 96 for BLS, 2,420 for ML-DSA-44.
//! - **Sign request key** (`signer_messages.pkh_encoding`): tags 0–2 are an ed25519,
//!   secp256k1 or p256 hash (20 bytes). Tag 3 is a full key hash (21 bytes, above) followed by
//!   the signature version (`int8`, 0–3): octez sends it for tz4 keys, with the version the
//!   baker asked for, or 3 (its latest) when none was given.
//! - **Error trace**: a `list` of errors, each a `string` (`u32` length) holding the error's
//!   JSON in json-data-encoding's BSON form. This module checks the lengths and keeps each
//!   error's bytes as they came ([`ErrorTrace`]).
//!
//! Decoding is stricter than octez where octez's own writer could never differ: a `bool` or
//! an option byte other than `0x00`/`0xff` is refused (octez reads any non-zero as true).

mod errors;
mod frame;
mod front;
mod messages;
#[cfg(test)]
mod tests;
mod upstream;
mod wire;

pub use frame::{read_frame, write_frame, FrameError};
pub use front::Front;
pub use messages::{
    authentication_payload, decode_request, decode_response, encode_request, encode_response, AuthenticatedRequest,
    AuthorizedKeys, BlsProvePossession, ErrorTrace, Request, RequestKind, Response, SignRequest, Signature,
    SignatureVersion,
};
pub use upstream::{to_http, translate, SocketClient};
pub use wire::{DecodeError, EncodeError};

/// The largest message a frame can carry: its length is a `u16`.
pub const MAX_FRAME: usize = u16::MAX as usize;
